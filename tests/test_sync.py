"""Edge–cloud sync: push, pull --from and sync between stores through another ``edgeslm serve``
(real HTTP, keys and roles) and a Hugging Face repo (the loopback hub): only missing blobs move,
cut transfers resume, wrong bytes and wrong keys are refused with nothing changed."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeslm.access.audit import report, verify
from edgeslm.access.keys import add_key
from edgeslm.bundle.layout import blob_member, manifest_member
from edgeslm.errors import IntegrityError
from edgeslm.store import Store, parse_name
from edgeslm.sync import edge
from edgeslm.sync.remotes import Remote
from edgeslm.sync.transfer import pull

from . import fakehub
from .conftest import edgeslm_command, snapshot
from .fake_runner import FakeRunner
from .ggufbuild import write_runnable_model
from .servekit import serve_process, serving


@pytest.fixture
def source(cli: Any, tmp_path: Path, home: Path) -> Store:
    """This device's store: a model, a quantized variant and a copy of it (a shared blob)."""
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf", n_embd=256)), "--name", "tiny").code == 0
    assert cli("quantize", "tiny", "--type", "q8_0", "--allow-requantize").code == 0
    assert cli("cp", "tiny:q8_0", "tiny:best").code == 0
    return Store.open(home / "models")


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path], Path]]:
    """Another edgeslm serve, its store empty, with an admin, a user and a reader key (each in a file)."""
    keyfile, files = tmp_path / "cloud-keys.toml", {}
    for role in ("admin", "user", "reader"):
        files[role] = tmp_path / f"{role}.key"
        files[role].write_text(add_key(keyfile, f"{role}-1", role) + "\n")
    home = tmp_path / "cloud"
    with serving(home, FakeRunner, api_keys=keyfile, audit_log=tmp_path / "cloud-audit.jsonl") as url:
        yield url, files, home


def stored(home: Path) -> dict[str, str]:
    return {str(m.name): m.digest for m in Store.open(home / "models").manifests()}


def test_push_then_pull_moves_only_missing_blobs(
    cli: Any, source: Store, cloud: Any, tmp_path: Path, home: Path
) -> None:
    url, keys, cloud_home = cloud
    assert cli("remote", "add", "cloud", url, "--key-file", str(keys["admin"])).code == 0
    pushed = cli("push", "tiny", "tiny:q8_0", "--to", "cloud", "--json")
    assert pushed.code == 0, pushed.err
    done = json.loads(pushed.out)
    assert done["blobs_moved"] == 2 and done["changed"] == ["tiny:latest", "tiny:q8_0"]
    assert stored(cloud_home) == {k: v for k, v in stored(home).items() if k != "tiny:best"}
    again = json.loads(cli("push", "tiny", "tiny:best", "--to", "cloud", "--json").out)
    assert again["blobs_moved"] == 0 and again["blobs_skipped"] == 2 and again["changed"] == ["tiny:best"]
    checked = subprocess.run(edgeslm_command(cloud_home, "verify"), capture_output=True, text=True)
    assert checked.returncode == 0 and "clean" in checked.stdout
    # a device with the user key pulls one of them
    device = tmp_path / "device"
    run = lambda *a: subprocess.run(edgeslm_command(device, *a), capture_output=True, text=True)  # noqa: E731
    assert run("remote", "add", "cloud", url, "--key-file", str(keys["user"])).returncode == 0
    got = run("pull", "tiny:best", "--from", "cloud")
    assert got.returncode == 0, got.stderr
    assert "updated\ttiny:best" in got.stdout and stored(device) == {"tiny:best": stored(home)["tiny:best"]}
    # both sides logged it: the device's own chain, and the server's requests
    assert verify(device / "audit.log").problems == () and verify(home / "audit.log").problems == ()
    mine = [json.loads(x) for x in (home / "audit.log").read_text().splitlines()]
    assert [(x["method"], x["route"], x["status"]) for x in mine] == [("PUSH", "remote:cloud", 200)] * 2
    assert [c["model"] for c in report(home / "audit.log").changes] == ["tiny, tiny:q8_0", "tiny, tiny:best"]
    changes = report(tmp_path / "cloud-audit.jsonl").changes
    routes = {(c["method"], c["route"].split("sha256")[0]) for c in changes}
    assert {("POST", "/edgeslm/v1/uploads/"), ("POST", "/edgeslm/v1/publish"), ("GET", "/edgeslm/v1/blobs/")} <= routes


def test_keys_and_roles_apply(cli: Any, source: Store, cloud: Any) -> None:
    url, keys, cloud_home = cloud
    before = snapshot(cloud_home)
    assert cli("remote", "add", "nokey", url).code == 0
    assert cli("remote", "add", "user", url, "--key-file", str(keys["user"])).code == 0
    refused = cli("push", "tiny", "--to", "nokey")
    assert refused.code == 77 and "wants a valid key" in refused.err and "--key-file" in refused.err
    refused = cli("push", "tiny", "--to", "user")
    assert refused.code == 77 and "admin role" in refused.err
    assert snapshot(cloud_home) == before
    assert cli("remote", "add", "reader", url, "--key-file", str(keys["reader"])).code == 0
    assert cli("pull", "tiny", "--from", "reader").code == 77
    assert cli("pull", "tiny", "--from", "user").code == 67  # the key may fetch; the model is not there


def test_a_cut_upload_resumes_from_where_it_stopped(source: Store, cloud: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url, keys, cloud_home = cloud
    m = source.get(parse_name("tiny"))
    data = source.blob_path(m.digest).read_bytes()
    half = len(data) // 2
    admin = {"Authorization": f"Bearer {keys['admin'].read_text().strip()}"}
    at = f"{url}/edgeslm/v1/uploads/{m.digest}"
    sent = httpx.post(at, content=data[:half], headers={**admin, "Upload-Length": str(len(data))})
    assert sent.status_code == 202 and sent.headers["Upload-Offset"] == str(half)
    asked = httpx.head(at, headers=admin)
    assert asked.status_code == 404 and asked.headers["Upload-Offset"] == str(half)
    wrong = httpx.post(at, content=data[:10], headers={**admin, "Upload-Length": str(len(data)), "Upload-Offset": "0"})
    assert wrong.status_code == 409 and wrong.headers["Upload-Offset"] == str(half)
    # the client is cut after its first piece, then resumes twice from what the server holds
    offsets: list[int] = []
    real = edge._read_from

    def cut_once(path: Path, offset: int, progress: Any) -> Iterator[bytes]:
        offsets.append(offset)
        pieces = real(path, offset, progress)
        yield next(pieces)
        if len(offsets) == 1:
            raise httpx.WriteError("cut")
        yield from pieces

    monkeypatch.setattr(edge, "CHUNK", 4096)
    monkeypatch.setattr(edge, "_read_from", cut_once)
    remote = Remote("cloud", url, str(keys["admin"]))
    from edgeslm.sync import push

    push(source, remote, [parse_name("tiny")])
    assert offsets[0] == half and half <= offsets[1] <= half + 4096  # the piece sent before the cut may have landed
    assert Store.open(cloud_home / "models").blob_path(m.digest).read_bytes() == data


def test_upload_and_publish_refuse_bad_input(source: Store, cloud: Any) -> None:
    url, keys, cloud_home = cloud
    admin = {"Authorization": f"Bearer {keys['admin'].read_text().strip()}"}
    m = source.get(parse_name("tiny"))
    data = source.blob_path(m.digest).read_bytes()
    before = snapshot(cloud_home)
    at = f"{url}/edgeslm/v1/uploads/{m.digest}"
    too_much = httpx.post(at, content=data + b"x", headers={**admin, "Upload-Length": str(len(data))})
    assert too_much.status_code == 400 and "more than" in too_much.text
    other = "sha256-" + "0" * 64
    lying = httpx.post(
        f"{url}/edgeslm/v1/uploads/{other}", content=data, headers={**admin, "Upload-Length": str(len(data))}
    )
    assert lying.status_code == 500 and "nothing was kept" in lying.text
    assert httpx.post(f"{url}/edgeslm/v1/uploads/..", content=b"", headers=admin).status_code in (400, 404)
    assert httpx.post(f"{url}/edgeslm/v1/uploads/{m.digest}", content=b"", headers=admin).status_code == 400
    early = httpx.post(f"{url}/edgeslm/v1/publish", json={"manifests": [json.loads(m.to_json())]}, headers=admin)
    assert early.status_code == 400 and "have not arrived" in early.text
    bad = json.loads(m.to_json()) | {"digest": "../../etc/passwd"}
    assert httpx.post(f"{url}/edgeslm/v1/publish", json={"manifests": [bad]}, headers=admin).status_code == 422
    assert httpx.post(f"{url}/edgeslm/v1/publish", json={"manifests": []}, headers=admin).status_code == 400
    reader = {"Authorization": f"Bearer {keys['reader'].read_text().strip()}"}
    assert httpx.get(f"{url}/edgeslm/v1/manifests", headers=reader).status_code == 403
    assert {k: v for k, v in snapshot(cloud_home).items() if "uploads" not in k} == before


def test_wrong_bytes_from_a_remote_are_refused_and_a_cut_download_resumes(
    cli: Any, source: Store, cloud: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, keys, cloud_home = cloud
    assert cli("remote", "add", "cloud", url, "--key-file", str(keys["admin"])).code == 0
    assert cli("push", "tiny", "--to", "cloud").code == 0
    device = Store.open(tmp_path / "device" / "models")
    remote = Remote("cloud", url, str(keys["user"]))
    digest = source.get(parse_name("tiny")).digest
    data = source.blob_path(digest).read_bytes()
    blob = Store.open(cloud_home / "models").blob_path(digest)
    blob.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # the remote's copy rots
    with pytest.raises(IntegrityError, match="sent wrong bytes"):
        pull(device, remote, [parse_name("tiny")])
    assert device.manifests() == [] and not any((device.root / "uploads").iterdir())
    blob.write_bytes(data)
    # a pull cut earlier left the first half; the next one asks for the rest only
    partial = device.root / "uploads" / f"{digest}.partial"
    partial.write_bytes(data[: len(data) // 2])
    asked: list[int] = []
    real = edge.EdgeRemote._download

    def spy(self: Any, digest: str, part: Any, progress: Any) -> None:
        asked.append(part.offset)
        real(self, digest, part, progress)

    monkeypatch.setattr(edge.EdgeRemote, "_download", spy)
    done = pull(device, remote, [parse_name("tiny")])
    assert asked == [len(data) // 2] and done.changed == ("tiny:latest",)
    assert device.blob_path(digest).read_bytes() == data and not partial.exists()


def test_sync_makes_a_device_match_the_remote(cli: Any, source: Store, cloud: Any, tmp_path: Path, home: Path) -> None:
    url, keys, cloud_home = cloud
    assert cli("remote", "add", "cloud", url, "--key-file", str(keys["admin"])).code == 0
    assert cli("push", "tiny", "tiny:q8_0", "--to", "cloud").code == 0
    device = tmp_path / "device"
    run = lambda *a: subprocess.run(edgeslm_command(device, *a), capture_output=True, text=True)  # noqa: E731
    assert run("import", str(write_runnable_model(tmp_path / "old.gguf", n_embd=64)), "--name", "tiny").returncode == 0
    assert run("import", str(tmp_path / "old.gguf"), "--name", "local-only").returncode == 0
    assert run("remote", "add", "cloud", url, "--key-file", str(keys["user"])).returncode == 0
    synced = run("sync", "--from", "cloud", "--prune")
    assert synced.returncode == 0, synced.stderr
    assert "updated\ttiny:latest" in synced.stdout and "updated\ttiny:q8_0" in synced.stdout
    assert "removed\tlocal-only:latest" in synced.stdout
    assert stored(device) == stored(cloud_home)
    again = json.loads(run("sync", "--from", "cloud", "--json").stdout)
    assert (
        again["changed"] == [] and again["blobs_moved"] == 0 and sorted(again["models"]) == sorted(stored(cloud_home))
    )
    lines = [json.loads(x) for x in (device / "audit.log").read_text().splitlines()]
    assert [x["method"] for x in lines] == ["SYNC", "SYNC"] and lines[0]["model"] == "*"


def test_remotes_are_checked(cli: Any, tmp_path: Path, home: Path) -> None:
    for url in ("ftp://host", "http://user:pw@host:1", "http://host/path", "hf://a/../b", "nothing"):
        refused = cli("remote", "add", "r", url)
        said = ("is not a remote address", "is not a hub repo", "give the server's address alone")
        assert refused.code == 2 and any(x in refused.err for x in said), refused.err
    assert cli("remote", "add", "r", "http://127.0.0.1:1", "--key-file", str(tmp_path / "absent")).code == 66
    assert cli("remote", "add", "bad name", "http://127.0.0.1:1").code == 2
    assert cli("remote", "add", "r", "http://127.0.0.1:1").code == 0
    assert cli("remote", "add", "r", "http://127.0.0.1:2").code == 2  # exists: --force
    listed = json.loads(cli("remote", "list", "--json").out)
    assert listed == [{"name": "r", "url": "http://127.0.0.1:1", "key_file": None, "kind": "edgeslm"}]
    down = cli("push", "x", "--to", "nowhere")
    assert down.code == 67 and "edgeslm remote add" in down.err
    assert cli("pull", "tiny", "--force").code == 2  # --force goes with --from
    assert cli("remote", "remove", "r").code == 0 and json.loads(cli("remote", "list", "--json").out) == []


def _hub_repo(source: Store, *names: str) -> dict[str, bytes]:
    files = {}
    for n in names:
        m = source.get(parse_name(n))
        files[manifest_member(m.name)] = m.to_json()
        for digest in m.blob_sizes():
            files[blob_member(digest)] = source.blob_path(digest).read_bytes()
    return files


def test_pull_from_a_hub_repo(cli: Any, source: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = fakehub.FakeHub(repos={"team/models": _hub_repo(source, "tiny", "tiny:q8_0")})
    device = Store.open(tmp_path / "device" / "models")
    with fakehub.serve(hub):
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        remote = Remote("hub", "hf://team/models")
        done = pull(device, remote, [parse_name("tiny:q8_0")])
        assert done.changed == ("tiny:q8_0",) and done.blobs_moved == 1
        assert device.get(parse_name("tiny:q8_0")).digest == source.get(parse_name("tiny:q8_0")).digest
        digest = source.get(parse_name("tiny")).digest
        hub.repos["team/models"][blob_member(digest)] = b"not the model"
        with pytest.raises(IntegrityError, match="wrong bytes"):
            pull(device, remote, [parse_name("tiny")])
        assert [str(m.name) for m in device.manifests()] == ["tiny:q8_0"]


@pytest.mark.real_model
def test_an_optimized_model_travels_by_bundle_and_by_push_and_answers_the_same(
    cli: Any, home: Path, tmp_path: Path
) -> None:
    """The issue's end to end: optimize picks a variant; a bundle carries it to one empty store and
    a push to another (a real edgeslm serve); verify is clean everywhere; greedy replies agree."""
    assert cli("pull", "smollm2-135m-instruct").code == 0
    tuned = cli("optimize", "smollm2-135m-instruct", "--types", "q4_0", "--chunks", "1", "--max-size", "95MB",
                "--no-mixed", "--report", str(tmp_path / "report"))
    assert tuned.code == 0, tuned.err
    best = Store.open(home / "models").get(parse_name("smollm2-135m-instruct:best"))
    assert best.info.file_type and best.size < 95_000_000  # the Q4_0 variant, chosen by measurement
    keyfile, admin = tmp_path / "keys.toml", tmp_path / "admin.key"
    admin.write_text(add_key(keyfile, "admin-1", "admin"))
    by_bundle, by_push = tmp_path / "device", tmp_path / "cloud"
    assert cli("bundle", "create", "smollm2-135m-instruct:best", "-o", str(tmp_path / "m.eslm")).code == 0
    imported = subprocess.run(edgeslm_command(by_bundle, "bundle", "import", str(tmp_path / "m.eslm")),
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    with serve_process(by_push, "--api-keys", str(keyfile), "--preload", "") as served:
        assert cli("remote", "add", "cloud", served.url, "--key-file", str(admin)).code == 0
        assert cli("push", "smollm2-135m-instruct:best", "--to", "cloud").code == 0
    run = ["run", "smollm2-135m-instruct:best", "The capital of France is", "--temperature", "0", "--max-tokens", "24"]
    replies = []
    for where in (home, by_bundle, by_push):
        assert stored(where)["smollm2-135m-instruct:best"] == best.digest
        checked = subprocess.run(edgeslm_command(where, "verify"), capture_output=True, text=True)
        assert checked.returncode == 0 and "clean" in checked.stdout
        replies.append(subprocess.run(edgeslm_command(where, *run), capture_output=True, text=True).stdout)
    assert replies[0].strip() and replies[0] == replies[1] == replies[2]


@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # huggingface_hub's plain-LFS path
def test_push_to_a_hub_repo_sends_only_what_it_lacks(
    source: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the loopback hub speaks plain LFS
    hub = fakehub.FakeHub()
    with fakehub.serve(hub):
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        remote = Remote("hub", "hf://team/models")
        from edgeslm.sync import push

        first = push(source, remote, [parse_name("tiny"), parse_name("tiny:q8_0")])
        assert first.blobs_moved == 2 and set(first.changed) == {"tiny:latest", "tiny:q8_0"}
        files = hub.repos["team/models"]
        for n in ("tiny", "tiny:q8_0"):
            m = source.get(parse_name(n))
            assert files[manifest_member(m.name)] == m.to_json()
            assert files[blob_member(m.digest)] == source.blob_path(m.digest).read_bytes()
        puts = len([r for r in hub.requests if r[0] == "PUT"])
        second = push(source, remote, [parse_name("tiny:best")])
        sent = [r[1] for r in hub.requests if r[0] == "PUT"][puts:]
        manifest = source.get(parse_name("tiny:best")).to_json()
        assert second.blobs_moved == 0 and sent == [f"/lfs/{hashlib.sha256(manifest).hexdigest()}"]  # its manifest only
        device = Store.open(tmp_path / "device" / "models")
        pull(device, remote, [parse_name("tiny:best")])
        assert device.get(parse_name("tiny:best")).digest == source.get(parse_name("tiny:best")).digest
