"""The `mimkd` command. Thin: it parses arguments and calls the library.

Each command group lives in its own module here (`run`, `models`, `mi`, ...) and adds its
subcommands with `add_parsers(subparsers, argv)`, each bound to a handler `handler(args) -> int`.
Every `MimkdError` is caught here, once, and printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mimkd.errors import MimkdError

# the command groups, in the order `mimkd --help` lists them
GROUPS = ("mimkd.cli.run", "mimkd.cli.reproduce", "mimkd.cli.models", "mimkd.cli.mi")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkd",
        description="Knowledge distillation for PyTorch, headlined by MIMKD.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(group).add_parsers(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return args.handler(args)
    except MimkdError as error:
        message = " ".join(str(error).split())
        print(f"mimkd: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimkd: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
