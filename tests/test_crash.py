"""kill -9 during import and during rm: verify then finds a clean store, earlier models intact."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CliResult, edgeslm_command, wait_for_partial
from .ggufbuild import ARCH, gguf_bytes, tensor_info, write_tiny_model

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]


def start(home: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(edgeslm_command(home, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def big_model(path: Path, n_bytes: int = 600_000_000) -> Path:
    """A valid GGUF whose one F32 tensor is a sparse run of zeros: slow to copy, free on disk."""
    head = gguf_bytes([ARCH], [tensor_info("token_embd.weight", [n_bytes // 4])])
    with open(path, "wb") as fp:
        fp.write(head + b"\0" * (-len(head) % 32))
        fp.truncate(fp.tell() + n_bytes)
    return path


def stored(cli: Cli) -> dict[str, str]:
    return {m["name"]: m["digest"] for m in json.loads(cli("list", "--json").out)}


def assert_clean_and_intact(cli: Cli, home: Path, kept: dict[str, str]) -> dict[str, str]:
    result = cli("verify")
    assert result.code == 0 and "clean" in result.out, result.out + result.err
    now = stored(cli)
    for name, digest in kept.items():
        assert now.get(name) == digest, f"{name} changed: {now.get(name)}"
        blob = home / "models" / "blobs" / digest
        assert "sha256-" + hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    assert not list((home / "models" / "tmp").iterdir())
    return now


def test_kill_during_import_mid_copy(cli: Cli, home: Path, tmp_path: Path) -> None:
    assert cli("import", str(write_tiny_model(tmp_path / "k.gguf")), "--name", "keep").code == 0
    kept = stored(cli)
    big = big_model(tmp_path / "big.gguf")
    for _ in range(2):
        proc = start(home, "import", str(big), "--name", "big")
        partial = wait_for_partial(home / "models" / "tmp", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert partial.exists()  # the half-written temp file is left behind...
        result = cli("verify")
        assert f"removed stale temp file {partial.name}" in result.err  # ...and swept
        assert_clean_and_intact(cli, home, kept)
        assert "big:latest" not in stored(cli)


@pytest.mark.parametrize("delay", [0.3, 0.45, 0.6, 0.8, 1.2])
def test_kill_during_import_at_any_moment(cli: Cli, home: Path, tmp_path: Path, delay: float) -> None:
    assert cli("import", str(write_tiny_model(tmp_path / "k.gguf")), "--name", "keep").code == 0
    kept = stored(cli)
    proc = start(home, "import", str(big_model(tmp_path / "big.gguf", 200_000_000)), "--name", "big")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    now = assert_clean_and_intact(cli, home, kept)
    assert set(now) <= {"keep:latest", "big:latest"}  # either the old state or the new one


@pytest.mark.parametrize("delay", [0.25, 0.35, 0.45, 0.55, 0.7, 0.9])
def test_kill_during_rm(cli: Cli, home: Path, tmp_path: Path, delay: float) -> None:
    for i in range(6):
        path = write_tiny_model(tmp_path / f"m{i}.gguf", seed=i, n_vocab=4096)
        assert cli("import", str(path), "--name", f"m{i}").code == 0
    cli("cp", "m0", "keep")  # shares m0's blob, which rm must therefore keep
    before = stored(cli)
    proc = start(home, "rm", "-y", *[f"m{i}" for i in range(6)])
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = {name: digest for name, digest in stored(cli).items()}
    assert set(survivors) <= set(before) and "keep:latest" in survivors
    assert_clean_and_intact(cli, home, survivors)  # each survivor whole, nothing half-removed


def test_concurrent_cli_calls_keep_the_index_whole(cli: Cli, home: Path, tmp_path: Path) -> None:
    """Eight processes import, copy and remove at once; every finished call is reflected."""
    for i in range(3):
        cli("import", str(write_tiny_model(tmp_path / f"old{i}.gguf", seed=100 + i)), "--name", f"old{i}")
    procs = [
        start(home, "import", str(write_tiny_model(tmp_path / f"n{i}.gguf", seed=i)), "--name", f"new{i}")
        for i in range(5)
    ]
    procs += [start(home, "cp", "old0", "copy0"), start(home, "rm", "-y", "old1"), start(home, "rm", "-y", "old2")]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)
    names = set(stored(cli))
    assert names == {f"new{i}:latest" for i in range(5)} | {"old0:latest", "copy0:latest"}
    assert_clean_and_intact(cli, home, stored(cli))
