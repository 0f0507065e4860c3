"""The one way benchmarks call the ``edgeslm`` command: in a fresh process, on a given home."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 3 * 3600  # the longest benchmark step (an optimize over several runtimes) takes minutes


def edgeslm(home: Path, *args: str) -> str:
    """stdout of ``edgeslm --home HOME ARGS…``; exits with its stderr's tail when it fails."""
    command = [sys.executable, "-m", "edgeslm", "--home", str(home), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise SystemExit(f"edgeslm {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout
