"""Run untrusted Python — code a model wrote — where it can harm nothing, and say how it ended.

Each run gets a fresh temporary folder (its working directory and the only place it can write),
an emptied environment, rlimits (CPU seconds, address space, file size, open files, processes),
its own process group, session and — where the kernel allows — PID, network and mount namespaces
and, as root, an unprivileged user id of its own (``launch.py`` does the isolating). A wall-clock
deadline ends it; the whole namespace dies with it. What isolation applied is in every result:
where namespaces are refused (an unprivileged user without user namespaces) only the rlimits and
the deadline hold, and the result says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from ..errors import InvalidParameterError

log = logging.getLogger(__name__)
LAUNCHER = Path(__file__).with_name("launch.py")
TAIL = 4096  # bytes of stdout and stderr kept in a result
FULL = ("pid", "network", "ipc", "filesystem", "rlimits")  # what a fully isolated run reports


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # address space
    file_bytes: int = 16 << 20  # any one file written, stdout and stderr included
    open_files: int = 64
    processes: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.wall_seconds <= 3600 or not 1 <= self.cpu_seconds <= 3600:
            raise InvalidParameterError("sandbox time limits must be between 1 s and an hour")
        if self.memory_bytes < 64 << 20 or self.processes < 2 or self.open_files < 16 or self.file_bytes < 4096:
            raise InvalidParameterError(
                "sandbox limits too small for Python to start: at least 64 MiB, 2 processes, 16 files, 4 KiB"
            )


class Outcome(str, Enum):
    PASSED = "passed"  # exit status 0
    FAILED = "failed"  # any other exit status (an exception, an assertion, a refused syscall)
    KILLED = "killed"  # a signal: an rlimit reached (CPU, file size) or a crash
    TIMEOUT = "timeout"  # still running at the wall-clock deadline: the whole group killed


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    returncode: int | None
    seconds: float
    stdout: str  # the last TAIL bytes
    stderr: str
    isolation: tuple[str, ...]  # what applied: pid, network, ipc, filesystem, user, rlimits

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "outcome": self.outcome.value, "isolation": list(self.isolation)}


def _interpreter() -> tuple[str, str, str]:
    """The real interpreter (a venv's ``python`` is a link to it), its prefix, and its path inside it."""
    exe = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    if not exe.startswith(prefix + os.sep):  # an interpreter outside its prefix: bind its own folder
        prefix = os.path.dirname(os.path.dirname(exe))
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and not os.path.realpath(libdir).startswith(prefix + os.sep):
        log.debug("libpython in %s lies outside %s: the sandboxed interpreter may not find it", libdir, prefix)
    return exe, prefix, os.path.relpath(exe, prefix)


def run_python(code: str, limits: Limits = Limits(), *, tmp_dir: Path | None = None) -> RunResult:
    """Run ``code`` as a Python program in the sandbox; never raises for what the code does.
    ``tmp_dir`` (default: the system's) holds the run's folder; as root, the program's user must be
    able to pass through it and every folder above it."""
    base = Path(tmp_dir or tempfile.gettempdir()).resolve()
    if os.geteuid() == 0:
        _check_traversable(base)
    root = Path(tempfile.mkdtemp(prefix="edgeslm-sandbox-", dir=base))
    try:
        return _run(code, limits, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check_traversable(base: Path) -> None:
    for folder in (base, *base.parents):
        if not os.stat(folder).st_mode & 0o001:
            raise InvalidParameterError(
                f"the sandbox's user cannot pass through {folder} (mode {os.stat(folder).st_mode & 0o777:o}); give "
                "a temporary folder whose parents are all searchable by others, such as /tmp"
            )


def _run(code: str, limits: Limits, root: Path) -> RunResult:
    os.chmod(root, 0o711)  # traversable by the sandbox's user, not listable
    work, python = root / "work", root / "python"
    work.mkdir(mode=0o700)
    python.mkdir(mode=0o755)
    (work / "main.py").write_text(code, encoding="utf-8")
    exe, prefix, exe_rel = _interpreter()
    cfg = {
        "work": str(work), "python": str(python), "prefix": prefix, "exe": exe, "exe_rel": exe_rel,
        "program": "main.py", "stdout": str(root / "stdout"), "stderr": str(root / "stderr"),
        "report": str(root / "isolation.json"),
        "limits": {k: v for k, v in asdict(limits).items() if k != "wall_seconds"},
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", str(LAUNCHER), json.dumps(cfg)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={}, cwd=root, start_new_session=True,  # its own process group and session
    )
    try:
        _, launcher_err = proc.communicate(timeout=limits.wall_seconds)
        code_, outcome = proc.returncode, None
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        launcher_err, code_, outcome = b"", None, Outcome.TIMEOUT
    seconds = time.perf_counter() - start
    if outcome is None:
        outcome = Outcome.PASSED if code_ == 0 else Outcome.KILLED if code_ and code_ > 128 else Outcome.FAILED
    stderr = _tail(root / "stderr") or launcher_err[-TAIL:].decode("utf-8", "replace")
    return RunResult(outcome, code_, seconds, _tail(root / "stdout"), stderr, _isolation(root))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The launcher's group: killing the launcher makes the kernel kill the program's namespace."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot end
        log.error("sandbox launcher %d survived SIGKILL", proc.pid)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL))
            return f.read(TAIL).decode("utf-8", "replace")
    except OSError:
        return ""


def _isolation(root: Path) -> tuple[str, ...]:
    try:
        report = json.loads((root / "isolation.json").read_text())
        return tuple(str(x) for x in report["applied"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


_probed: tuple[str, ...] | None = None


def isolation() -> tuple[str, ...]:
    """What a run on this machine gets (measured once per process, with a program that does nothing)."""
    global _probed
    if _probed is None:
        _probed = run_python("pass").isolation
    return _probed


def fully_isolated() -> bool:
    return all(part in isolation() for part in FULL)
