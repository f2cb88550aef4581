# Doctests are collected from src/softxent; the command-line entry point must not run on import.
collect_ignore = ["src/softxent/__main__.py"]
# the tests' conftest.py files are set-up, not doctests; collected as modules, they would clash on their
# shared name once a test folder is on sys.path
collect_ignore_glob = ["tests/conftest.py", "tests/*/conftest.py"]
