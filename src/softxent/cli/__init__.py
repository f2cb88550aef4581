"""The `softxent` command line: explain the math, train a classifier, benchmark against the peers."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module; each module has add_arguments(parser) and run(args) -> int, imported on use so
# `softxent explain` never pays for matplotlib or torch
COMMANDS = {
    "explain": ("softxent.cli.explain", "show every quantity of softmax and its loss for a few scores"),
    "train": ("softxent.cli.train", "train a classifier on softxent's loss, compare with scikit-learn, draw it"),
    "bench": ("softxent.cli.bench", "run the benchmark scripts and tabulate softxent against its peers"),
}


class UsageError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2, no traceback."""


def parses_as(convert, text: str) -> bool:
    """True when convert(text) (int, float) accepts the text: how the commands tell numbers from words."""
    try:
        convert(text)
    except ValueError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softxent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["explain"]:
        from .explain import negative_numbers_as_values

        argv = negative_numbers_as_values(argv)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as err:
        # our own checks raise these with a message naming the argument: show it, not a traceback
        print(f"softxent {args.command}: error: {err}", file=sys.stderr)
        return 2


def _version() -> str:
    from softxent import __version__

    return __version__
