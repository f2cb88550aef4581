"""`python -m softxent` is the `softxent` command."""

import sys

from softxent.cli import main

sys.exit(main())
