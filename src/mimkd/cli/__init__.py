"""The `mimkd` command. Thin: it parses arguments and calls the library.

Each command group lives in its own module here (`run`, `models`, `mi`, ...) and adds its
subcommands with `add_parsers(subparsers, argv)`, each bound to a handler `handler(args) -> int`.
Every `MimkdError` is caught here, once, and printed as one line on stderr with exit code 2.

Exit codes: 0 done; 1 a crash (a bug: traceback), or a process of a distributed run stopping
because another one failed; 2 a user error (one line); 75 (EX_TEMPFAIL) stopped by SIGTERM or
SIGUSR1 with a checkpoint at the current step, to be resumed (a scheduler may requeue); 130 Ctrl-C.
Under torchrun the other processes of a run stay quiet about an error one process shows
(an error's `quiet` attribute); `exit_code` on an error or interruption overrides the default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mimkd.errors import MimkdError, did_you_mean

# the command groups, in the order `mimkd --help` lists them
GROUPS = ("mimkd.cli.run", "mimkd.cli.reproduce", "mimkd.cli.models", "mimkd.cli.mi")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as one line (our exit 2) instead of usage + error.

    Subcommand parsers are made with the parent's class, so every level gets this."""

    def error(self, message: str):
        raise MimkdError(f"{message}; see `{self.prog} --help`.")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mimkd",
        description="Knowledge distillation for PyTorch, headlined by MIMKD.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(group).add_parsers(sub, argv)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    # argparse takes a command's positionals in one run, so `key=value` overrides written after
    # an option (`mimkd export M --format onnx data.root=D`) arrive here: they are overrides
    if unknown and hasattr(args, "overrides") and all(_is_override(u) for u in unknown):
        args.overrides = [*(args.overrides or []), *unknown]
        unknown = []
    if unknown:
        command = _subparsers(parser).choices[args.command]
        options = [o for action in command._actions for o in action.option_strings]
        hint = did_you_mean(unknown[0].split("=", 1)[0], options)
        raise MimkdError(
            f"unrecognized arguments: {' '.join(unknown)}.{hint} See `{command.prog} --help`."
        )
    return args


def _is_override(text: str) -> bool:
    return "=" in text and not text.startswith("-")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _interrupted(error: KeyboardInterrupt, argv: list[str]) -> str:
    """Where to pick up: a run's own folder (`Trainer.fit` attaches it), else nothing to resume."""
    run_dir = getattr(error, "run_dir", None)
    if not run_dir:
        return "mimkd: interrupted."
    command = argv[0] if argv and argv[0] in ("train", "distill") else "distill"
    how = "interrupted"
    signal_name = getattr(error, "signal_name", None)
    if signal_name:  # a preemption (`RunPreempted`): last.pt holds the step it stopped at
        how = f"stopped by {signal_name} at step {error.step}, checkpoint saved"
    return f"mimkd: {how}; continue with: mimkd {command} --resume {run_dir}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(argv)
        return args.handler(args)
    except MimkdError as error:
        if not getattr(error, "quiet", False):
            message = " ".join(str(error).split())
            print(f"mimkd: error: {message}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt as error:
        if not getattr(error, "quiet", False):
            print(_interrupted(error, argv), file=sys.stderr)
        return getattr(error, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
