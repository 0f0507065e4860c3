"""The one way benchmarks call the ``edgeslm`` command: in a fresh process, on a given home."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 3 * 3600  # the longest benchmark step (an optimize over several runtimes) takes minutes
NATIVE_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "build-native-llama.sh"
BUILD_TIMEOUT_S = 3600  # building llama.cpp's tools takes about 20 minutes on 2 cores, once
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"  # as the Makefile's NO_AMX: those kernels crash on F16 here


def edgeslm(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """stdout of ``edgeslm --home HOME ARGS…`` (``env``: added to this environment); exits with its
    stderr's tail when it fails."""
    command = [sys.executable, "-m", "edgeslm", "--home", str(home), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"edgeslm {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def parse_with_native(parser: argparse.ArgumentParser, home: Path) -> tuple[argparse.Namespace, Path]:
    """``parser``'s arguments plus the ones every native-beside-ours benchmark takes (``--home``,
    ``--native-bin``, ``--write``), parsed; and llama.cpp's tools folder."""
    parser.add_argument("--home", type=Path, default=home)
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    return args, native_bin(args.native_bin)


def native_bin(given: Path | None = None) -> Path:
    """llama.cpp's own tools: ``given``, else the folder ``build-native-llama.sh`` builds (once) and prints."""
    if given is not None:
        return given
    env = {**os.environ}
    if platform.machine() == "x86_64":  # as the Makefile builds llama-cpp-python: AMX kernels left out
        env["CFLAGS"] = env["CXXFLAGS"] = NO_AMX
    command = ["bash", str(NATIVE_SCRIPT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{NATIVE_SCRIPT} failed: {done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])
