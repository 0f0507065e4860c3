"""The ``edgeslm`` command line: parse, call a library function, print. Nothing else.

Errors are mapped to messages and exit codes here and only here (``errors.exit_code_for``).
Only the module of the command being run is imported (``COMMANDS``), and each command module
imports its verb's machinery when the command runs, so ``edgeslm --version`` and ``edgeslm
list`` answer at once; ``edgeslm --help`` (and a mistyped command) builds the whole parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence

from ..config import resolve_settings
from ..errors import EdgeslmError, exit_code_for
from ..version import __version__

# (module, its configure function, the commands it adds), in the order --help lists them.
MODULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("store_cmds", "configure", ("pull", "import", "list", "show", "cp", "rm", "verify", "catalog")),
    ("custom_cmds", "configure", ("create",)),
    ("custom_cmds", "configure_finetune", ("finetune",)),
    ("infer_cmds", "configure", ("run", "embed", "bench")),
    ("quantize_cmds", "configure", ("quantize",)),
    ("calibrate_cmds", "configure", ("calibrate",)),
    ("convert_cmds", "configure", ("convert",)),
    ("convert_cmds", "configure_export", ("export",)),
    ("eval_cmds", "configure", ("eval", "compare")),
    ("optimize_cmds", "configure", ("optimize",)),
    ("recommend_cmds", "configure", ("recommend",)),
    ("plan_cmds", "configure", ("plan",)),
    ("plan_cmds", "configure_tune", ("tune",)),
    ("bundle_cmds", "configure", ("bundle",)),
    ("sync_cmds", "configure", ("remote", "push", "sync")),
    ("deploy_cmds", "configure", ("deploy",)),
    ("admin_cmds", "configure", ("keys", "audit")),
    ("serve_cmds", "configure", ("serve", "ps")),
)
COMMANDS = {command: (module, fn) for module, fn, commands in MODULES for command in commands}
_GLOBAL_WITH_VALUE = ("--home",)

log = logging.getLogger("edgeslm")


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is imported and configured."""
    parser = argparse.ArgumentParser(
        prog="edgeslm",
        description="Small language models on edge devices: store, quantize, evaluate, choose and serve.",
    )
    parser.add_argument("--version", action="version", version=f"edgeslm {__version__}")
    parser.add_argument("--home", help="the edgeslm home folder (default: $EDGESLM_HOME, else the user data dir)")
    parser.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never touch the network (also: EDGESLM_OFFLINE=1 or HF_HUB_OFFLINE=1)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command == "--version":
        wanted = []
    elif command in COMMANDS:
        wanted = [COMMANDS[command]]
    else:
        wanted = [(m, fn) for m, fn, _ in MODULES]
    for module, fn in wanted:
        getattr(importlib.import_module(f"{__name__}.{module}"), fn)(sub)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (past the global options), "--version" when that comes first,
    or None when there is none (help, or a usage error: the whole parser is built)."""
    args = iter(argv)
    for arg in args:
        if arg in _GLOBAL_WITH_VALUE:
            next(args, None)
        elif arg in ("-h", "--help"):
            return None
        elif arg == "--version":
            return arg
        elif not arg.startswith("-"):
            return arg
    return None


def as_flags(message: str, params: Sequence[str], parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``message`` with each library parameter it names written as the command's flag for it."""
    command = _subparser(parser, getattr(args, "command", None))
    flags: dict[str, str] = {}
    for action in command._actions if command else []:
        names = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        if names and action.dest not in flags:
            flags[action.dest] = names[0]
    for param in params:
        if param in flags:
            message = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w-])", flags[param], message)
    return message


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return None


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="edgeslm: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGXFSZ"):
        # Past a file-size limit, writes should fail with EFBIG (reported cleanly), not kill us.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser(command_in(argv))
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = resolve_settings(home=args.home, offline=args.offline)
        result: int = args.run(args, settings)
        return result
    except EdgeslmError as exc:
        print(f"Error: {as_flags(str(exc), exc.params, parser, args)}", file=sys.stderr)
        return exit_code_for(exc)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("Interrupted; the store is unchanged by the interrupted step.", file=sys.stderr)
        return 130
