"""Sealed bundles: create, verify, import — and every way a hostile archive is refused with the
store left exactly as it was."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeslm.bundle import create_bundle, import_bundle, verify_bundle
from edgeslm.bundle.layout import INDEX, SIGNATURE, Index
from edgeslm.bundle.signing import generate_key
from edgeslm.errors import BundleError, InputFileError, OutputFileError
from edgeslm.store import Store, parse_name
from edgeslm.store.verify import verify_store

from .conftest import edgeslm_command, snapshot
from .ggufbuild import write_runnable_model

Members = list[tuple[tarfile.TarInfo, bytes]]


@pytest.fixture
def source(cli: Any, tmp_path: Path, home: Path) -> Store:
    """A store with a model, a quantized variant of it and a copy (shared blob)."""
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf")), "--name", "tiny").code == 0
    assert cli("quantize", "tiny", "--type", "q8_0", "--allow-requantize").code == 0
    assert cli("cp", "tiny:q8_0", "tiny:best").code == 0
    return Store.open(home / "models")


@pytest.fixture
def target(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "other" / "models")


def names(*texts: str) -> list[Any]:
    return [parse_name(t) for t in texts]


def members(path: Path) -> Members:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def rewrite(path: Path, out: Path, change: Callable[[Members], Members]) -> Path:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in change(members(path)):
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def test_a_bundle_carries_models_to_an_empty_store(source: Store, target: Store, tmp_path: Path) -> None:
    made = create_bundle(source, names("tiny", "tiny:q8_0", "tiny:best"), tmp_path / "m.eslm")
    assert made.models == ("tiny:latest", "tiny:q8_0", "tiny:best") and made.blobs == 2 and not made.signed
    again = create_bundle(source, names("tiny", "tiny:q8_0", "tiny:best"), tmp_path / "again.eslm")
    assert len(members(again.path)) == 1 + 3 + 2  # index, manifests, blobs (the copy shares its blob)
    report = verify_bundle(made.path)
    assert report.blobs == 2 and not report.key_checked
    done = import_bundle(target, made.path)
    assert set(done.imported) == {"tiny:latest", "tiny:q8_0", "tiny:best"} and done.blobs_written == 2
    for name in ("tiny", "tiny:q8_0", "tiny:best"):
        a, b = source.get(parse_name(name)), target.get(parse_name(name))
        assert (a.digest, a.size, a.source, a.info) == (b.digest, b.size, b.source, b.info)
        assert target.blob_path(b.digest).read_bytes() == source.blob_path(a.digest).read_bytes()
    assert verify_store(target).ok
    second = import_bundle(target, made.path)  # nothing new: nothing written
    assert second.imported == () and second.blobs_written == 0 and second.blobs_present == 2


def test_only_missing_blobs_are_written_and_clashing_names_need_force(
    source: Store, target: Store, tmp_path: Path, cli: Any
) -> None:
    first = create_bundle(source, names("tiny"), tmp_path / "a.eslm")
    import_bundle(target, first.path)
    both = create_bundle(source, names("tiny", "tiny:q8_0"), tmp_path / "b.eslm")
    report = import_bundle(target, both.path)
    assert report.imported == ("tiny:q8_0",) and report.unchanged == ("tiny:latest",)
    assert (report.blobs_written, report.blobs_present) == (1, 1)
    other = create_bundle(source, names("tiny:q8_0"), tmp_path / "c.eslm")
    renamed = rewrite(other.path, tmp_path / "d.eslm", lambda ms: _rename(ms, "tiny:q8_0", "tiny:latest"))
    before = snapshot(target.root)
    with pytest.raises(BundleError, match="already name other models.*--force"):
        import_bundle(target, renamed)
    assert snapshot(target.root) == before
    assert import_bundle(target, renamed, force=True).imported == ("tiny:latest",)
    assert target.get(parse_name("tiny")).digest == source.get(parse_name("tiny:q8_0")).digest


def _rename(ms: Members, old: str, new: str) -> Members:
    """The manifest of ``old`` under the name ``new``, the index updated to match (as an attacker could)."""
    import hashlib

    from edgeslm.bundle.layout import manifest_member

    old_member, new_member = manifest_member(parse_name(old)), manifest_member(parse_name(new))
    out: Members = []
    data = next(d for i, d in ms if i.name == old_member)
    fields = json.loads(data)
    fields["name"] = new
    raw = json.dumps(fields).encode()
    for info, body in ms:
        if info.name == INDEX:
            index = Index.from_bytes(body)
            manifests = {new_member: (hashlib.sha256(raw).hexdigest(), len(raw))}
            body = Index(index.edgeslm, index.created, (new,), manifests, index.blobs).to_bytes()
            info.size = len(body)
        elif info.name == old_member:
            info.name, info.size, body = new_member, len(raw), raw
        out.append((info, body))
    return out


def test_signatures(source: Store, target: Store, tmp_path: Path) -> None:
    key, other = tmp_path / "k", tmp_path / "k2"
    public, other_public = generate_key(key), generate_key(other)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(OutputFileError, match="never overwritten"):
        generate_key(key)
    signed = create_bundle(source, names("tiny"), tmp_path / "s.eslm", key=key)
    assert signed.signed and verify_bundle(signed.path, public).key_checked
    assert verify_bundle(signed.path).signed  # present, not checked without a key
    before = snapshot(target.root)
    with pytest.raises(BundleError, match="signed by another key"):
        import_bundle(target, signed.path, other_public)
    plain = create_bundle(source, names("tiny"), tmp_path / "p.eslm")
    with pytest.raises(BundleError, match="not signed"):
        import_bundle(target, plain.path, public)
    with pytest.raises(InputFileError, match="not an unencrypted PEM Ed25519 public key"):
        verify_bundle(signed.path, key)  # the private key where the public one goes
    with pytest.raises(InputFileError, match="Ed25519 private key"):
        create_bundle(source, names("tiny"), tmp_path / "n.eslm", key=public)
    assert not (tmp_path / "n.eslm").exists()
    # a signed bundle whose blob is swapped: the signature still matches the index, the digest does not
    swapped = rewrite(signed.path, tmp_path / "x.eslm", lambda ms: [(i, _flip(d) if i.name.startswith("blobs/") else d)
                                                                    for i, d in ms])
    with pytest.raises(BundleError, match="does not match its digest"):
        import_bundle(target, swapped, public)
    assert snapshot(target.root) == before
    assert import_bundle(target, signed.path, public).key_checked


def _flip(data: bytes) -> bytes:
    return data[:100] + bytes([data[100] ^ 1]) + data[101:]


def _hostile(kind: str, ms: Members) -> Members:
    blob = next(i for i, (info, _) in enumerate(ms) if info.name.startswith("blobs/"))
    info, data = ms[blob]
    if kind == "flipped byte":
        return [*ms[:blob], (info, _flip(data)), *ms[blob + 1 :]]
    if kind == "missing blob":
        return ms[:blob] + ms[blob + 1 :]
    if kind == "unlisted file":
        return [*ms, (tarfile.TarInfo("blobs/sha256-" + "0" * 64), b"")]
    if kind == "duplicate":
        return [*ms, (info, data)]
    if kind == "size differs from the index":
        info.size -= 1
        return [*ms[:blob], (info, data[:-1]), *ms[blob + 1 :]]
    if kind in ("../../x", "/etc/passwd", "blobs/./x"):
        return [*ms, (tarfile.TarInfo(kind), b"")]
    link = tarfile.TarInfo(info.name)
    link.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
    link.linkname = "/etc/passwd"
    return [*ms[:blob], (link, b""), *ms[blob + 1 :]]


HOSTILE = {
    "flipped byte": "does not match its digest",
    "missing blob": "lacks 1 file",
    "unlisted file": "does not list",
    "duplicate": "twice",
    "size differs from the index": "in the archive but",
    "../../x": "unsafe path",
    "/etc/passwd": "unsafe path",
    "blobs/./x": "unsafe path",
    "symlink": "link",
    "hard link": "link",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_bundle_is_refused_and_nothing_changes(
    kind: str, source: Store, target: Store, tmp_path: Path
) -> None:
    good = create_bundle(source, names("tiny", "tiny:q8_0"), tmp_path / "good.eslm")
    import_bundle(target, create_bundle(source, names("tiny"), tmp_path / "one.eslm").path)  # a store with a model
    bad = rewrite(good.path, tmp_path / "bad.eslm", lambda ms: _hostile(kind, ms))
    before = snapshot(target.root)
    with pytest.raises(BundleError, match=HOSTILE[kind]):
        verify_bundle(bad)
    with pytest.raises(BundleError, match=HOSTILE[kind]):
        import_bundle(target, bad)
    assert snapshot(target.root) == before
    assert not list(target.tmp_dir.iterdir()), "a temp file was left"


def test_truncated_and_oversized_and_not_bundles(source: Store, target: Store, tmp_path: Path) -> None:
    good = create_bundle(source, names("tiny"), tmp_path / "good.eslm")
    raw = good.path.read_bytes()
    before = snapshot(target.root)
    for cut in (len(raw) // 2, 1000, 700):
        short = tmp_path / f"short-{cut}.eslm"
        short.write_bytes(raw[:cut])
        with pytest.raises(BundleError, match="truncated|not a bundle|index"):
            import_bundle(target, short)
    # a 200 GB blob declared in the index and in the archive's header (its bytes never come)
    huge = tmp_path / "huge.eslm"
    index = Index("0", "now", (), {}, {"sha256-" + "1" * 64: 200 * 10**9})
    with open(huge, "wb") as fp:
        tar = tarfile.open(fileobj=fp, mode="w", format=tarfile.PAX_FORMAT)  # left open: no end marker
        body = index.to_bytes()
        info = tarfile.TarInfo(INDEX)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        blob = tarfile.TarInfo("blobs/sha256-" + "1" * 64)
        blob.size = 200 * 10**9
        fp.write(blob.tobuf(tarfile.PAX_FORMAT))
        fp.write(b"\0" * 4096)
    with pytest.raises(BundleError, match="needs 200.0 GB free"):
        import_bundle(target, huge)
    with pytest.raises(BundleError, match="truncated"):
        verify_bundle(huge)
    for path, match in ((tmp_path, "folder"), (tmp_path / "nope.eslm", "does not exist")):
        with pytest.raises(InputFileError, match=match):
            verify_bundle(path)
    text = tmp_path / "t.eslm"
    text.write_text("hello")
    with pytest.raises(BundleError, match="not a bundle"):
        verify_bundle(text)
    signature_first = rewrite(good.path, tmp_path / "sf.eslm", lambda ms: ms[1:] + ms[:1])
    with pytest.raises(BundleError, match="does not start with an edgeslm bundle index"):
        verify_bundle(signature_first)
    assert snapshot(target.root) == before and not list(target.tmp_dir.iterdir())


def test_the_cli(cli: Any, source: Store, tmp_path: Path) -> None:
    out = tmp_path / "m.eslm"
    assert cli("bundle", "keygen", str(tmp_path / "key")).code == 0
    made = cli("bundle", "create", "tiny", "tiny:q8_0", "-o", str(out), "--sign", str(tmp_path / "key"))
    assert made.code == 0 and "signed" in made.err
    checked = cli("bundle", "verify", str(out), "--key", str(tmp_path / "key.pub"), "--json")
    assert checked.code == 0 and json.loads(checked.out)["key_checked"] is True
    assert cli("rm", "tiny:q8_0", "--yes").code == 0
    done = cli("bundle", "import", str(out), "--key", str(tmp_path / "key.pub"))
    assert done.code == 0 and "imported tiny:q8_0; already stored: tiny:latest" in done.out
    missing = cli("bundle", "create", "nope", "-o", str(out))
    assert missing.code != 0 and "nope" in missing.err
    damaged = tmp_path / "d.eslm"
    damaged.write_bytes(out.read_bytes()[:-2048][: len(out.read_bytes()) // 2])
    refused = cli("bundle", "import", str(damaged))
    assert refused.code != 0 and "truncated" in refused.err and "Traceback" not in refused.err
    assert cli("bundle", "create", "tiny", "-o", str(tmp_path)).code != 0  # a folder is not a file name
    assert SIGNATURE not in out.name


@pytest.mark.real_model
def test_a_quantized_builtin_travels_by_bundle_and_answers_the_same(cli: Any, home: Path, tmp_path: Path) -> None:
    assert cli("pull", "smollm2-135m-instruct").code == 0
    assert cli("quantize", "smollm2-135m-instruct", "--type", "q4_0", "--allow-requantize").code == 0
    out = tmp_path / "smollm2.eslm"
    assert cli("bundle", "create", "smollm2-135m-instruct:q4_0", "-o", str(out)).code == 0
    other = tmp_path / "device"
    run = ["run", "smollm2-135m-instruct:q4_0", "The capital of France is", "--temperature", "0", "--max-tokens", "24"]
    done = subprocess.run(edgeslm_command(other, "bundle", "import", str(out)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for where in (home, other):
        checked = subprocess.run(edgeslm_command(where, "verify"), capture_output=True, text=True)
        assert checked.returncode == 0 and "clean" in checked.stdout
    replies = [subprocess.run(edgeslm_command(w, *run), capture_output=True, text=True).stdout for w in (home, other)]
    assert replies[0].strip() and replies[0] == replies[1]


def test_an_index_whose_names_are_not_its_manifests_is_refused() -> None:
    for models in (("\x1b[31mevil",), ("tiny:latest",)):  # a terminal escape; a model without its manifest
        with pytest.raises(BundleError, match="names models"):
            Index.from_bytes(Index("0", "now", models, {}, {}).to_bytes())
