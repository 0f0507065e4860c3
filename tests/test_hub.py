"""Pulls from a Hugging Face Hub served on loopback in the hub's own layout."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeslm.errors import ModelNotFoundError, SourceError
from edgeslm.sources.hub import choose_gguf, parse_hub_ref

from .conftest import CliResult, snapshot
from .fakehub import FakeHub, serve
from .ggufbuild import write_tiny_model

Cli = Callable[..., CliResult]
REPO = "TestOrg/Tiny-GGUF"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[FakeHub]:
    q8 = write_tiny_model(tmp_path / "q8.gguf", seed=1).read_bytes()
    # Over 20 MB: huggingface_hub writes in 10 MiB chunks, so only then is there something to resume.
    q4 = write_tiny_model(tmp_path / "q4.gguf", seed=2, n_vocab=170_000).read_bytes()
    files = {"tiny-Q8_0.gguf": q8, "tiny-Q4_K_M.gguf": q4, "README.md": b"# tiny"}
    with serve(FakeHub(repos={REPO: files})) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield running


def test_pull_a_named_quant(cli: Cli, hub: FakeHub, home: Path) -> None:
    result = cli("pull", f"hf.co/{REPO}:Q8_0")
    assert result.code == 0, result.err
    models = json.loads(cli("list", "--json").out)
    assert [m["name"] for m in models] == ["hf.co/testorg/tiny-gguf:q8_0"]
    assert models[0]["source"]["file"] == "tiny-Q8_0.gguf" and models[0]["source"]["repo"] == REPO
    assert models[0]["size"] == len(hub.repos[REPO]["tiny-Q8_0.gguf"])
    assert not (home / "models" / "downloads" / "models--TestOrg--Tiny-GGUF").exists()  # cache dropped
    assert cli("verify").code == 0


def test_pull_without_quant_takes_q4_k_m_like_ollama(cli: Cli, hub: FakeHub) -> None:
    assert cli("pull", f"hf.co/{REPO}").code == 0
    models = json.loads(cli("list", "--json").out)
    assert models[0]["source"]["file"] == "tiny-Q4_K_M.gguf" and models[0]["name"].endswith(":latest")


def test_interrupted_download_resumes_with_a_range_request(cli: Cli, hub: FakeHub) -> None:
    size = len(hub.repos[REPO]["tiny-Q4_K_M.gguf"])
    hub.cut_after = size * 2 // 3
    result = cli("pull", f"hf.co/{REPO}:q4_k_m")
    assert result.code == 0, result.err
    ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith(".gguf") and r]
    assert len(ranges) == 1 and 0 < int(ranges[0][6:-1]) <= size * 2 // 3, ranges
    assert json.loads(cli("list", "--json").out)[0]["size"] == size


def test_digest_mismatch_is_refused_and_nothing_stored(cli: Cli, hub: FakeHub, home: Path) -> None:
    hub.lie_sha256 = True
    before = snapshot(home / "models")
    result = cli("pull", f"hf.co/{REPO}:Q8_0")
    assert result.code == 74 and "sha256" in result.err and "nothing was stored" in result.err
    after = {k: v for k, v in snapshot(home / "models").items() if k != "downloads/CACHEDIR.TAG"}
    assert after == before  # not even the download cache keeps the bad bytes


def test_missing_repo_and_missing_quant(cli: Cli, hub: FakeHub) -> None:
    missing = cli("pull", "hf.co/TestOrg/nope")
    assert missing.code == 67 and "not found" in missing.err
    no_quant = cli("pull", f"hf.co/{REPO}:IQ2_XS")
    assert no_quant.code == 67 and "tiny-Q8_0.gguf" in no_quant.err  # lists what there is


def test_offline_flag_never_touches_the_network(cli: Cli, hub: FakeHub) -> None:
    result = cli("--offline", "pull", f"hf.co/{REPO}:Q8_0")
    assert result.code == 69 and "offline" in result.err
    assert hub.requests == []


def test_parse_and_choose() -> None:
    ref = parse_hub_ref("hf.co/Org/Repo-GGUF:Q4_K_M")
    assert ref is not None and ref.repo_id == "Org/Repo-GGUF" and ref.quant == "Q4_K_M"
    assert str(ref.store_name) == "hf.co/org/repo-gguf:q4_k_m"
    assert parse_hub_ref("smollm2-135m-instruct") is None
    for bad in ("hf.co/../etc", "hf.co/a/b/c", "hf.co/org/..:x", "hf.co/org/repo:Q4/../../x"):
        with pytest.raises(ModelNotFoundError):
            parse_hub_ref(bad)
    files = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q8_0.gguf", "mmproj-f16.gguf"]
    assert choose_gguf(files, "q4_k_s", "r") == "m-Q4_K_S.gguf"
    assert choose_gguf(files, None, "r") == "m-Q4_K_M.gguf"
    with pytest.raises(ModelNotFoundError, match="cannot choose"):
        choose_gguf(files, "Q4", "r")
    with pytest.raises(SourceError, match="split GGUF"):
        choose_gguf(["m-Q8_0-00001-of-00002.gguf"], "Q8_0", "r")


def test_catalogue_name_resolves_to_its_gguf_repo(cli: Cli, hub: FakeHub) -> None:
    hub.repos["Qwen/Qwen3-0.6B-GGUF"] = {"Qwen3-0.6B-Q8_0.gguf": hub.repos[REPO]["tiny-Q8_0.gguf"]}
    result = cli("pull", "qwen3-0.6b:q8_0")
    assert result.code == 0, result.err
    (model,) = json.loads(cli("list", "--json").out)
    assert model["name"] == "qwen3-0.6b:q8_0" and model["source"]["repo"] == "Qwen/Qwen3-0.6B-GGUF"
