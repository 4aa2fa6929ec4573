"""``flowvi`` command line. Every module ``flowvi.cli.cmd_*`` adds one subcommand through its
``register(subparsers)``; errors a user can fix are printed as one line, without a traceback."""

from __future__ import annotations

import argparse
import copy
import importlib
import pkgutil
import sys

from flowvi.targets import TargetError
from flowvi.training.loop import TrainingDiverged

USER_ERRORS = (TargetError, TrainingDiverged, ValueError, OSError, KeyError)


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.strerror and str(e).startswith("["):  # [Errno N] text: 'file'
        name = e.filename if e.filename is not None else "a file"
        return f"{name}: {e.strerror}"
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: ``(default: X)`` is appended to each option that has a value
    default and whose help does not already state one; an option without help text gets ``default: X``."""

    def _format_action(self, action):
        if not action.help and action.option_strings and _shows_default(action):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not _shows_default(action):
            return text
        return text + " (default: %(default)s)"


def _shows_default(action) -> bool:
    """Options that take a value and have one by default (flags such as ``--resume`` have nothing to show)."""
    return action.nargs != 0 and action.default not in (None, argparse.SUPPRESS) and bool(action.option_strings)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowvi", description="Normalizing flows for variational inference and sampling.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("cmd_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"flowvi {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flowvi {args.command}: interrupted; resume a fit with --resume", file=sys.stderr)
        return 130
