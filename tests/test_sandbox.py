"""The sandbox for model-written code: programs that try to get out, and what stops them."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeslm.errors import InvalidParameterError
from edgeslm.tasks.sandbox import TAIL, Limits, Outcome, fully_isolated, isolation, run_python

QUICK = Limits(wall_seconds=5, cpu_seconds=3)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder of the test's own that the sandbox's user can pass through (pytest's are private)."""
    path = Path(tempfile.mkdtemp(prefix="edgeslm-sandbox-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _needs(part: str) -> None:
    if part not in isolation():  # the kernel refused namespaces (an unprivileged user without user namespaces)
        pytest.skip(f"this machine gives the sandbox no {part} isolation: {isolation()}")


def _leftovers(root: Path) -> list[int]:
    """Processes still running with a working directory under ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(str(root)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_program_runs_and_its_output_comes_back() -> None:
    result = run_python("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n", QUICK)
    assert result.outcome is Outcome.PASSED and result.returncode == 0
    assert result.stdout == "hello\n" and result.stderr == "oops\n"
    assert "rlimits" in result.isolation


def test_a_failing_assertion_fails() -> None:
    result = run_python("assert 1 + 1 == 3, 'arithmetic'\n", QUICK)
    assert result.outcome is Outcome.FAILED and result.returncode == 1
    assert "AssertionError: arithmetic" in result.stderr


def test_this_machine_isolates_fully_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("root only: an unprivileged user gets what user namespaces allow")
    assert fully_isolated(), isolation()
    result = run_python("import os\nprint(os.getuid(), os.getgid(), os.getgroups(), os.getpid())\n", QUICK)
    uid, gid, groups, pid = result.stdout.split(" ", 3)
    assert int(uid) != 0 and int(gid) != 0 and groups == "[]"
    assert int(pid) <= 3  # its own PID namespace


def test_an_infinite_loop_is_stopped(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = run_python("while True:\n    pass\n", Limits(wall_seconds=3, cpu_seconds=1), tmp_dir=tmp_path)
    assert result.outcome in (Outcome.KILLED, Outcome.TIMEOUT)
    assert time.perf_counter() - start < 8
    assert not _leftovers(tmp_path)


def test_a_sleeper_meets_the_wall_clock(tmp_path: Path) -> None:
    result = run_python("import time\ntime.sleep(60)\n", Limits(wall_seconds=1, cpu_seconds=5), tmp_dir=tmp_path)
    assert result.outcome is Outcome.TIMEOUT and result.returncode is None
    assert result.seconds < 5
    assert not _leftovers(tmp_path)


def test_a_fork_bomb_is_contained_and_nothing_outlives_it(tmp_path: Path) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_python(bomb, Limits(wall_seconds=2, cpu_seconds=2, processes=8), tmp_dir=tmp_path)
    assert not result.passed
    time.sleep(0.5)
    assert not _leftovers(tmp_path)


def test_children_that_leave_the_process_group_still_die(tmp_path: Path) -> None:
    _needs("pid")
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')\n"
    result = run_python(code, QUICK, tmp_dir=tmp_path)
    assert result.passed and result.stdout == "parent done\n"
    time.sleep(0.5)
    assert not _leftovers(tmp_path)


def test_a_ten_gigabyte_allocation_fails_fast() -> None:
    result = run_python("x = bytearray(10 * 2**30)\n", QUICK)
    assert result.outcome is Outcome.FAILED and "MemoryError" in result.stderr
    assert result.seconds < 4


def test_writes_land_only_in_its_own_folder(tmp_path: Path) -> None:
    _needs("filesystem")
    outside = [tmp_path / "escaped.txt", Path("/tmp") / f"edgeslm-escape-{os.getpid()}", Path.home() / "escaped.txt"]
    lines = "".join(
        f"try:\n    open({str(p)!r}, 'w').write('x')\n    print('wrote', {str(p)!r})\nexcept OSError as e:\n"
        f"    print('refused', e.errno)\n"
        for p in outside
    )
    result = run_python(lines + "open('here.txt', 'w').write('fine')\nprint(open('here.txt').read())\n", QUICK)
    assert result.passed, result.stderr
    assert "wrote" not in result.stdout and result.stdout.count("refused") == 3
    assert result.stdout.endswith("fine\n")
    assert not any(p.exists() for p in outside)


def test_no_network(tmp_path: Path) -> None:
    _needs("network")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
    result = run_python(code, QUICK)
    thread.join()
    server.close()
    assert result.outcome is Outcome.FAILED and "connected" not in result.stdout
    assert not accepted


def test_it_cannot_signal_its_parent_or_anyone_else() -> None:
    code = (
        f"import os, signal\nfor pid in ({os.getpid()}, {os.getppid()}, -1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print('refused', pid, e.errno)\n"
        "print('still here')\n"
    )
    result = run_python(code, QUICK)
    assert f"refused {os.getpid()}" in result.stdout  # not in its namespace, or not its user's
    assert os.getpid() > 0  # this process lives to check
    if "pid" in result.isolation:  # kill(-1) reached only its own namespace: itself excepted, nothing
        assert result.passed and result.stdout.endswith("still here\n")


def test_a_flood_of_output_is_cut_off() -> None:
    start = time.perf_counter()
    result = run_python("while True:\n    print('x' * 65536)\n", Limits(wall_seconds=10, file_bytes=1 << 20))
    assert not result.passed and time.perf_counter() - start < 8
    assert len(result.stdout) <= TAIL


def test_the_environment_is_emptied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESLM_SECRET_FOR_TEST", "hunter2")
    result = run_python("import os\nprint(sorted(os.environ))\n", QUICK)
    assert result.passed and "EDGESLM_SECRET" not in result.stdout
    assert result.stdout.strip() == "['LANG', 'LD_LIBRARY_PATH', 'PYTHONHASHSEED']"


def test_it_sees_none_of_the_hosts_processes() -> None:
    _needs("pid")
    result = run_python("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n", QUICK)
    assert result.passed and max(eval(result.stdout)) <= 3  # noqa: S307 - a list of ints printed by the test's program


def test_a_private_temporary_folder_is_refused_as_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("root only: the program runs as another user only under root")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(InvalidParameterError, match="cannot pass through .*private"):
        run_python("pass", QUICK, tmp_dir=private)


@pytest.mark.parametrize(
    "limits", [{"wall_seconds": 0}, {"cpu_seconds": 0}, {"memory_bytes": 1 << 20}, {"processes": 1}]
)
def test_limits_too_small_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(InvalidParameterError, match="sandbox"):
        Limits(**limits)  # type: ignore[arg-type]
