"""The ``edgeslm`` command line: parse, call a library function, print. Nothing else.

Errors are mapped to messages and exit codes here and only here (``errors.exit_code_for``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .. import __version__
from ..config import resolve_settings
from ..errors import EdgeslmError, exit_code_for
from . import (
    admin_cmds,
    convert_cmds,
    eval_cmds,
    infer_cmds,
    optimize_cmds,
    quantize_cmds,
    recommend_cmds,
    serve_cmds,
    store_cmds,
)

log = logging.getLogger("edgeslm")


def make_parser() -> argparse.ArgumentParser:
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
    store_cmds.configure(sub)
    infer_cmds.configure(sub)
    quantize_cmds.configure(sub)
    convert_cmds.configure(sub)
    convert_cmds.configure_export(sub)
    eval_cmds.configure(sub)
    optimize_cmds.configure(sub)
    recommend_cmds.configure(sub)
    admin_cmds.configure(sub)
    serve_cmds.configure(sub)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="edgeslm: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGXFSZ"):
        # Past a file-size limit, writes should fail with EFBIG (reported cleanly), not kill us.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    parser = make_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = resolve_settings(home=args.home, offline=args.offline)
        result: int = args.run(args, settings)
        return result
    except EdgeslmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("Interrupted; the store is unchanged by the interrupted step.", file=sys.stderr)
        return 130
