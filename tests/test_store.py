"""The store's library API: import, dedup, copy, remove plans, sweep and verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeslm.errors import IntegrityError, InvalidModelFileError, ModelNotFoundError
from edgeslm.store import Store, parse_name
from edgeslm.store.atomic import TempFile
from edgeslm.store.verify import verify_store

from .conftest import snapshot
from .ggufbuild import gguf_bytes, kv_str, tensor_info, write, write_tiny_model

SRC = {"kind": "file"}


def test_import_then_get(store: Store, tiny_model: Path) -> None:
    manifest = store.add_file(tiny_model, parse_name("mine:v1"), source=SRC)
    assert manifest.size == tiny_model.stat().st_size
    assert store.blob_path(manifest.digest).read_bytes() == tiny_model.read_bytes()
    assert store.get(parse_name("MINE:v1")) == manifest
    with pytest.raises(ModelNotFoundError, match="tags present: mine:v1"):
        store.get(parse_name("mine"))


def test_same_bytes_are_stored_once(store: Store, tiny_model: Path) -> None:
    a = store.add_file(tiny_model, parse_name("a"), source=SRC)
    b = store.add_file(tiny_model, parse_name("b"), source=SRC)
    assert a.digest == b.digest
    assert len(list(store.blobs_dir.iterdir())) == 1


def test_remove_plan_keeps_shared_blobs(store: Store, tiny_model: Path, tmp_path: Path) -> None:
    store.add_file(tiny_model, parse_name("a"), source=SRC)
    store.copy(parse_name("a"), parse_name("b"))
    other = store.add_file(write_tiny_model(tmp_path / "o.gguf", seed=3), parse_name("c"), source=SRC)
    plan = store.plan_remove([parse_name("a")])
    assert plan.blobs == () and plan.freed_bytes == 0
    assert store.execute_remove(plan) == 0
    assert store.find(parse_name("a")) is None and store.find(parse_name("b")) is not None
    plan = store.plan_remove([parse_name("b"), parse_name("c")])
    assert plan.freed_bytes == tiny_model.stat().st_size + other.size
    assert store.execute_remove(plan) == plan.freed_bytes
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.manifests_dir.iterdir()) == []  # empty folders pruned


def test_reimport_under_same_name_drops_the_old_blob(store: Store, tiny_model: Path, tmp_path: Path) -> None:
    old = store.add_file(tiny_model, parse_name("a"), source=SRC)
    new = store.add_file(write_tiny_model(tmp_path / "n.gguf", seed=9), parse_name("a"), source=SRC)
    assert old.digest != new.digest
    assert not store.blob_path(old.digest).exists()


def test_refused_files_leave_the_store_unchanged(store: Store, tiny_model: Path, tmp_path: Path) -> None:
    store.add_file(tiny_model, parse_name("keep"), source=SRC)
    before = snapshot(store.root)
    bad = write(tmp_path / "bad.gguf", tiny_model.read_bytes()[:500])
    with pytest.raises(InvalidModelFileError):
        store.add_file(bad, parse_name("bad"), source=SRC)
    not_a_model = write(
        tmp_path / "meta.gguf", gguf_bytes([kv_str("general.name", "x")], [tensor_info("w", [8])], b"\0" * 32)
    )
    with pytest.raises(InvalidModelFileError, match="no 'general.architecture'"):
        store.add_file(not_a_model, parse_name("meta"), source=SRC)
    with pytest.raises(IntegrityError, match="nothing was stored"):
        store.add_file(tiny_model, parse_name("x"), source=SRC, expected_sha256="0" * 64)
    assert snapshot(store.root) == before


def test_sweep_removes_stale_temps_and_orphans_but_not_live_temps(store: Store, tiny_model: Path) -> None:
    manifest = store.add_file(tiny_model, parse_name("a"), source=SRC)
    stale = store.tmp_dir / "blob-1-dead.partial"
    stale.write_bytes(b"half a blob")  # nobody holds its lock: its writer died
    orphan = store.blobs_dir / ("sha256-" + "ab" * 32)
    orphan.write_bytes(b"unnamed")
    with TempFile(store.tmp_dir, "blob") as live:
        report = store.sweep()
        assert live.path.exists()
    assert report.stale_temps == (stale,) and report.orphan_blobs == (orphan.name,)
    assert not stale.exists() and not orphan.exists()
    assert store.blob_path(manifest.digest).exists()


def test_verify_reports_corruption_missing_blobs_and_bad_manifests(
    store: Store, tiny_model: Path, tmp_path: Path
) -> None:
    a = store.add_file(tiny_model, parse_name("a"), source=SRC)
    b = store.add_file(write_tiny_model(tmp_path / "b.gguf", seed=5), parse_name("b"), source=SRC)
    assert verify_store(store).ok
    blob = store.blob_path(a.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    store.blob_path(b.digest).unlink()
    bad = store.manifest_path(parse_name("c"))
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    report = verify_store(store)
    details = "\n".join(f"{p.subject}: {p.detail}" for p in report.problems)
    assert not report.ok
    assert f"{a.digest}: content hashes to" in details and "used by a:latest" in details
    assert "b:latest: its blob" in details and "is missing" in details
    assert "unreadable manifest" in details


def test_manifest_with_hostile_digest_is_rejected(store: Store, tiny_model: Path) -> None:
    manifest = store.add_file(tiny_model, parse_name("a"), source=SRC)
    path = store.manifest_path(manifest.name)
    data = json.loads(path.read_text())
    data["digest"] = "sha256-../../../etc/passwd"
    path.write_text(json.dumps(data))
    assert store.manifests() == []
    assert any("bad digest" in p.detail for p in verify_store(store).problems)


def test_reimport_repairs_a_corrupted_blob(store: Store, tiny_model: Path) -> None:
    manifest = store.add_file(tiny_model, parse_name("a"), source=SRC)
    blob = store.blob_path(manifest.digest)
    blob.write_bytes(b"\0" * manifest.size)
    assert not verify_store(store).ok
    store.add_file(tiny_model, parse_name("a"), source=SRC)
    assert verify_store(store).ok and blob.read_bytes() == tiny_model.read_bytes()


def test_a_store_locked_too_long_is_a_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from edgeslm.errors import StoreError
    from edgeslm.store import registry

    Store.open(home / "models")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
         "l.acquire(); print('held', flush=True); time.sleep(30)", str(home / "models" / "store.lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(registry, "LOCK_TIMEOUT", 0.3)
        with pytest.raises(StoreError, match=r"locked by another edgeslm process for 0.3 s"):
            Store.open(home / "models")
    finally:
        holder.kill()
        holder.communicate(timeout=10)  # reaps it and closes its pipe
    assert Store.open(home / "models").manifests() == []  # free again
