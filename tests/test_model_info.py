from __future__ import annotations

from pathlib import Path

import pytest

from edgeslm.formats.gguf_header import read_gguf_header
from edgeslm.formats.model_info import estimate_memory, file_type_name, model_info
from edgeslm.formats.size_class import SizeClass, classify
from edgeslm.units import format_bytes, format_params, parse_bytes, parse_count

from .ggufbuild import write_tiny_model


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (99_999_999, SizeClass.BELOW_MICRO),
        (100_000_000, SizeClass.MICRO),
        (134_515_008, SizeClass.MICRO),
        (1_449_999_999, SizeClass.MICRO),
        (1_450_000_000, SizeClass.SMALL),
        (1_700_000_000, SizeClass.SMALL),
        (13_949_999_999, SizeClass.SMALL),
        (13_950_000_000, SizeClass.MEDIUM),
        (30_000_000_000, SizeClass.MEDIUM),
        (30_500_000_000, SizeClass.ABOVE_MEDIUM),
        (70_000_000_000, SizeClass.ABOVE_MEDIUM),
    ],
)
def test_size_class_boundaries(params: int, expected: SizeClass) -> None:
    assert classify(params).size_class == expected


def test_tiny_model_info(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "m.gguf", n_embd=64, n_layer=2, n_vocab=128)
    info = model_info(read_gguf_header(path))
    embd, attn_q, norms = 128 * 64, 64 * 64, 64
    assert info.n_params == embd + 2 * (attn_q + norms) + norms
    assert info.architecture == "llama"
    assert info.size_class == SizeClass.BELOW_MICRO
    assert info.vocab_size == 128 and info.tokenizer_model == "gpt2"
    assert info.has_chat_template and info.file_type == "F16"
    mix = {s.ggml_type: s for s in info.type_mix}
    assert mix["F16"].n_params == embd + 2 * attn_q and mix["F16"].n_bytes == 2 * mix["F16"].n_params
    assert mix["F32"].n_params == 3 * norms and mix["F32"].n_tensors == 3
    assert info.bits_per_weight == pytest.approx(8 * info.tensor_bytes / info.n_params, abs=1e-3)


def test_memory_estimate_follows_the_dimensions(tmp_path: Path) -> None:
    info = model_info(read_gguf_header(write_tiny_model(tmp_path / "m.gguf")))
    est = estimate_memory(info, 1000)
    # 2 layers x 1024 cells (padded to 256) x 2 kv heads x (16 + 16) head dims x 2 bytes
    assert est.kv_cache_bytes == 2 * 1024 * 2 * 32 * 2
    assert est.weights_bytes == info.tensor_bytes
    assert estimate_memory(info, 2048).kv_cache_bytes == 2 * est.kv_cache_bytes
    with pytest.raises(ValueError):
        estimate_memory(info, 0)


def test_file_type_names() -> None:
    assert file_type_name(15) == "Q4_K_M"
    assert file_type_name(0) == "F32"
    assert file_type_name(3) == "Q4_1"
    assert file_type_name(9999) == "unknown (9999)"
    assert file_type_name("x") is None


def test_units() -> None:
    assert parse_bytes("80MB") == 80_000_000
    assert parse_bytes("1.5 GiB") == int(1.5 * 2**30)
    assert parse_bytes("4g") == 4_000_000_000
    assert parse_count("135M") == 135_000_000 and parse_count("1.5B") == 1_500_000_000
    assert parse_count("8e9") == 8_000_000_000
    assert format_params(134_515_008) == "134.5M" and format_bytes(98_362_432) == "98.4 MB"
    for bad in ("", "MB", "12XB", "-1GB", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    for bad in ("", "B", "abc", "-3M", "nan", "infB"):
        with pytest.raises(ValueError):
            parse_count(bad)
