"""The bounded header walk: agrees with gguf-py on good files, refuses every kind of bad one."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import gguf
import pytest
from gguf.constants import GGMLQuantizationType as T
from gguf.constants import GGUFValueType as V

from edgeslm.errors import InputFileError, InvalidModelFileError
from edgeslm.formats.gguf_header import ArrayValue, read_gguf_header
from edgeslm.sources.builtin import BUILTINS

from .ggufbuild import (
    ARCH,
    gguf_bytes,
    gstr,
    kv_array,
    kv_str,
    kv_u32,
    one_tensor_model,
    tensor_info,
    u32,
    u64,
    write,
    write_tiny_model,
)


def refuse(tmp_path: Path, data: bytes, *needles: str) -> str:
    path = write(tmp_path / "bad.gguf", data)
    with pytest.raises(InvalidModelFileError) as info:
        read_gguf_header(path)
    message = str(info.value)
    assert message.startswith("bad.gguf is not a valid GGUF file: ")
    assert "at byte" in message
    for needle in needles:
        assert needle in message, message
    return message


def test_agrees_with_gguf_py_on_a_written_model(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "m.gguf", n_layer=3)
    header = read_gguf_header(path)
    reference = gguf.GGUFReader(path)
    assert header.data_offset == reference.data_offset
    assert [t.name for t in header.tensors] == [t.name for t in reference.tensors]
    for ours, theirs in zip(header.tensors, reference.tensors, strict=True):
        assert ours.offset == theirs.data_offset
        assert ours.n_bytes == theirs.n_bytes
        assert ours.n_elements == theirs.n_elements
        assert ours.ggml_type == theirs.tensor_type
    assert header.metadata["general.architecture"] == "llama"
    assert header.metadata["llama.block_count"] == 3
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArrayValue) and tokens.count == 128 and tokens.items is not None
    assert tokens.items[:2] == ("t0", "t1")


@pytest.mark.real_model
def test_reads_a_builtin_model_like_gguf_py(builtin_home: Path) -> None:
    # gguf-py needs ~15 s for Gemma's 262k-token vocabulary; SmolLM2 is enough to compare.
    blob = builtin_home / "models" / "blobs" / f"sha256-{BUILTINS['smollm2-135m-instruct'].sha256}"
    header = read_gguf_header(blob)
    reference = gguf.GGUFReader(blob)
    assert header.data_offset == reference.data_offset
    assert [t.offset for t in header.tensors] == [int(t.data_offset) for t in reference.tensors]
    assert set(header.metadata) == {k for k in reference.fields if not k.startswith("GGUF.")}


def test_minimal_model_is_accepted(tmp_path: Path) -> None:
    header = read_gguf_header(write(tmp_path / "ok.gguf", one_tensor_model()))
    assert header.version == 3 and header.alignment == 32 and header.tensors[0].n_bytes == 256


# --- the bad-input table: each a file, and words its refusal must contain ----------------------

BODY = [tensor_info("w", [64])]
DATA = b"\0" * 256
BAD_FILES = {
    "empty": (b"", ["too short"]),
    "three bytes": (b"GGU", ["too short"]),
    "wrong magic": (b"GGML" + one_tensor_model()[4:], ["magic", "not a GGUF file"]),
    "version 1": (gguf_bytes([ARCH], BODY, DATA, version=1), ["version 1"]),
    "version 99": (gguf_bytes([ARCH], BODY, DATA, version=99), ["version 99"]),
    "big-endian": (b"GGUF" + (3).to_bytes(4, "big") + one_tensor_model()[8:], ["big-endian"]),
    "absurd key count": (gguf_bytes([ARCH], BODY, DATA, n_kv=2**40), ["key/value count 1,099,511,627,776"]),
    "absurd tensor count": (gguf_bytes([ARCH], BODY, DATA, n_tensors=2**62), ["tensor count"]),
    "key count past end": (gguf_bytes([ARCH], BODY, DATA, n_kv=5), []),
    "lying key length": (gguf_bytes([gstr("general.architecture", 10**9)], []), ["key declares 1,000,000,000 bytes"]),
    "lying string value": (
        gguf_bytes([gstr("general.name") + u32(V.STRING) + gstr("x", 2**40)], []),
        ["value of 'general.name'"],
    ),
    "array bomb": (
        b"GGUF" + u32(3) + u64(0) + u64(1) + kv_array("a", V.UINT32, 4_000_000),
        ["array 'a' declares 4,000,000 elements"],
    ),
    "string array bomb": (gguf_bytes([kv_array("tok", V.STRING, 2**50)], []), ["array 'tok'"]),
    "string element lies": (
        gguf_bytes([kv_array("tok", V.STRING, 2, gstr("a") + gstr("b", 10**6))], []),
        ["'tok' element"],
    ),
    "unknown value type": (gguf_bytes([gstr("k") + u32(13) + u32(0)], []), ["key 'k' has unknown value type 13"]),
    "unknown array type": (gguf_bytes([kv_array("k", 77, 1, u32(0))], []), ["unknown value type 77"]),
    "array of arrays": (gguf_bytes([kv_array("k", V.ARRAY, 1, u32(4) + u64(0))], []), ["array of arrays"]),
    "duplicate key": (gguf_bytes([ARCH, ARCH], BODY, DATA), ["duplicate key 'general.architecture'"]),
    "empty key": (gguf_bytes([gstr("") + u32(V.UINT8) + b"\0"], []), ["key length 0"]),
    "unknown tensor type": (gguf_bytes([ARCH], [tensor_info("w", [64], 4)], DATA), ["tensor 'w'", "ggml type 4"]),
    "duplicate tensor": (
        gguf_bytes([ARCH], [tensor_info("w", [32]), tensor_info("w", [32], offset=128)], DATA),
        ["duplicate tensor name 'w'"],
    ),
    "zero dimension": (gguf_bytes([ARCH], [tensor_info("w", [64, 0])], DATA), ["tensor 'w' has a zero dimension"]),
    "negative dimension": (gguf_bytes([ARCH], [tensor_info("w", [2**64 - 5])], DATA), ["negative dimension -5"]),
    "overflowing dimensions": (
        gguf_bytes([ARCH], [tensor_info("w", [2**32, 2**32])], DATA),
        ["overflow a 64-bit element count"],
    ),
    "five dimensions": (gguf_bytes([ARCH], [tensor_info("w", [1, 1, 1, 1, 1])], DATA), ["5 dimensions"]),
    "no dimensions": (gguf_bytes([ARCH], [tensor_info("w", [])], DATA), ["0 dimensions"]),
    "not a block multiple": (
        gguf_bytes([ARCH], [tensor_info("w", [33], T.Q4_0)], DATA),
        ["rows of 33 elements", "Q4_0's block size 32"],
    ),
    "alignment not a power of two": (gguf_bytes([ARCH, kv_u32("general.alignment", 48)], BODY, DATA), ["48"]),
    "alignment zero": (gguf_bytes([ARCH, kv_u32("general.alignment", 0)], BODY, DATA), ["alignment 0"]),
    "alignment wrong type": (gguf_bytes([ARCH, kv_str("general.alignment", "32")], BODY, DATA), ["uint32"]),
    "tensor past end of file": (
        gguf_bytes([ARCH], [tensor_info("w", [1024])], DATA),
        ["tensor 'w' ends at byte", "truncated download?"],
    ),
    "offset past end of file": (gguf_bytes([ARCH], [tensor_info("w", [64], offset=2**60)], DATA), ["tensor 'w'"]),
    "overlapping tensors": (
        gguf_bytes([ARCH], [tensor_info("a", [64]), tensor_info("b", [64], offset=128)], b"\0" * 512),
        ["tensor 'a'", "overlaps tensor 'b'"],
    ),
    "misaligned tensor": (gguf_bytes([ARCH], [tensor_info("w", [8], offset=4)], DATA), ["not a multiple of"]),
    "tensor name too long": (gguf_bytes([ARCH], [tensor_info("n" * 64, [64])], DATA), ["64-byte name"]),
    "tensor name not utf-8": (
        gguf_bytes([ARCH], [gstr(b"\xff\xfe") + u32(1) + u64(64) + u32(0) + u64(0)], DATA),
        ["not valid UTF-8"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_refuses_bad_file(tmp_path: Path, case: str) -> None:
    data, needles = BAD_FILES[case]
    refuse(tmp_path, data, *needles)


@pytest.mark.parametrize("cut", [1, 4, 8, 20, 30, 45, 60, 100, 150, 250])
def test_refuses_every_truncation(tmp_path: Path, cut: int) -> None:
    data = write_tiny_model(tmp_path / "m.gguf").read_bytes()
    refuse(tmp_path, data[: len(data) * cut // 1000])


def test_refuses_random_bytes(tmp_path: Path) -> None:
    rng = random.Random(1)
    for _ in range(50):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 600)))
        refuse(tmp_path, data)
        refuse(tmp_path, b"GGUF" + u32(3) + data)


def test_random_mutations_raise_only_our_error(tmp_path: Path) -> None:
    """Flip bytes of a valid file anywhere in its header: the walk accepts or refuses, never crashes."""
    original = write_tiny_model(tmp_path / "m.gguf", n_vocab=16).read_bytes()
    header_end = read_gguf_header(tmp_path / "m.gguf").data_offset
    rng = random.Random(7)
    refused = 0
    for _ in range(400):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(header_end)] = rng.getrandbits(8)
        path = write(tmp_path / "mut.gguf", bytes(data))
        try:
            read_gguf_header(path)
        except InvalidModelFileError:
            refused += 1
    assert refused > 100


def test_the_49_byte_array_bomb_is_refused_with_little_memory(tmp_path: Path) -> None:
    data = b"GGUF" + u32(3) + u64(0) + u64(1) + kv_array("a", V.UINT32, 4_000_000)
    assert len(data) == 49
    path = write(tmp_path / "bomb.gguf", data)
    tracemalloc.start()
    with pytest.raises(InvalidModelFileError, match="4,000,000 elements"):
        read_gguf_header(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # One 4 MiB read window; gguf-py 0.19.0 takes 3.9 GiB here (timings: benchmarks/header_walk.py).
    assert peak < 8 * 2**20, peak


def test_big_vocabulary_in_a_big_file_is_walked_in_bounded_memory(tmp_path: Path) -> None:
    """300k strings (Gemma 3 has 262k) before a 3 GB sparse tensor: a few MiB, whatever the size."""
    n = 300_000
    strings = b"".join(gstr(f"tok{i}") for i in range(n))
    tokens = kv_array("tokenizer.ggml.tokens", V.STRING, n, strings)
    head = gguf_bytes([ARCH, tokens], [tensor_info("w", [750_000_000])])
    path = tmp_path / "big.gguf"
    with open(path, "wb") as fp:
        fp.write(head + b"\0" * (-len(head) % 32))
        fp.truncate(fp.tell() + 3_000_000_000)  # sparse: no disk used
    tracemalloc.start()
    header = read_gguf_header(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert header.metadata["tokenizer.ggml.tokens"] == ArrayValue(V.STRING, n, None)
    assert header.tensors[0].n_bytes == 3_000_000_000
    assert peak < 16 * 2**20, peak


def test_string_count_cap(tmp_path: Path) -> None:
    n = 2 * 2**20 + 1
    data = gguf_bytes([kv_array("tok", V.STRING, n, gstr("") * n)], [])
    refuse(tmp_path, data, "over 2,097,152 strings")


def test_metadata_cap(tmp_path: Path) -> None:
    big = 65 * 2**20
    data = gguf_bytes([ARCH, kv_array("blob", V.UINT8, big, b"\0" * big)], [])
    refuse(tmp_path, data, "metadata exceeds the 64 MiB cap")


def test_long_strings_are_checked_but_not_kept(tmp_path: Path) -> None:
    template = "x" * (2 * 2**20)
    header = read_gguf_header(
        write(tmp_path / "t.gguf", gguf_bytes([ARCH, kv_str("tokenizer.chat_template", template)], []))
    )
    assert header.metadata["tokenizer.chat_template"] is None


def test_directory_missing_and_special_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="is a directory"):
        read_gguf_header(tmp_path)
    with pytest.raises(InputFileError, match="does not exist"):
        read_gguf_header(tmp_path / "nope.gguf")
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(InputFileError, match="not a regular file"):
        read_gguf_header(fifo)
