"""`maskml` command line: one sub-command per module in this package.

Each module defines `register(subparsers)`, which adds its parser and sets
`func=run`. Errors the user can fix (MaskmlError) print one line and exit 2;
Ctrl-C exits 130 without a traceback, saying what was kept.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from maskml.errors import MaskmlError

COMMANDS = ("segment", "track", "demo", "serve", "eval", "models", "export", "bench", "train", "data")


class Parser(argparse.ArgumentParser):
    """argparse, but a value that starts with a minus and a digit is a value, not an unknown option: a
    click left of or above the image (--point -5,10) is then reported as outside it. (argparse itself
    takes only plain negative numbers such as -5 for values; no maskml option name starts with a digit.)
    Sub-command parsers are of this class too (add_subparsers makes them of the parser's class).

    Hydra overrides (KEY=VALUE) of the commands that take them (train, eval interactive) may also stand
    after options: argparse gives its `nargs="*"` positional only the words before the first option."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra and hasattr(parsed, "overrides") and all("=" in w and not w.startswith("-") for w in extra):
            parsed.overrides = [*parsed.overrides, *extra]
        elif extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="maskml", description="Promptable image and video object segmentation.")
    parser.add_argument("--version", action="version", version=f"maskml {importlib.import_module('maskml').__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"maskml.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"maskml.cli.{name}":
                raise
            continue  # command not written yet
        module.register(subparsers)
    parser.commands = subparsers.choices  # name -> its parser
    return parser


def help_for_bare_words(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser | None:
    """The parser whose help answers a bare `maskml` or a bare command that cannot run without arguments
    (`maskml train`): its help lists what to give, where argparse's error would only name what is missing."""
    if not words:
        return parser
    command = parser.commands.get(words[0]) if len(words) == 1 else None
    if command is not None and any(action.required for action in command._actions):
        return command
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    helpful = help_for_bare_words(parser, sys.argv[1:] if argv is None else argv)
    if helpful is not None:
        helpful.print_help(sys.stderr)
        return 2
    # Hydra-style commands (train) take KEY=VALUE overrides anywhere on the line, options included
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(arg.startswith("-") for arg in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        args.func(args)
    except MaskmlError as exc:
        print(f"maskml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # a command may say how far it got and what it kept; every file maskml writes appears whole or not at all
        detail = f" {exc}" if str(exc) else f"; {getattr(args, 'on_interrupt', 'no file was left half-written')}"
        print(f"maskml {args.command}: interrupted{detail}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
