"""Calibration: the ggml_tensor layout matches the installed header; the importance matrix of a
real model equals an independent computation; quantize takes it (and the types that need one);
hostile or foreign imatrix files, short texts and Ctrl-C change nothing."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import struct
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeslm.errors import InvalidModelFileError
from edgeslm.formats.imatrix import Entry, Imatrix, read_imatrix, write_imatrix
from edgeslm.store import Store, parse_name

from .conftest import edgeslm_command, snapshot
from .ggufbuild import write_runnable_model

SMOL = "smollm2-135m-instruct"


def _header() -> str:
    found = list(Path(sysconfig.get_paths()["purelib"]).glob("include/ggml.h"))
    assert found, "llama-cpp-python installs ggml.h beside its package"
    return found[0].read_text()


def test_the_tensor_layout_is_the_installed_headers() -> None:
    from edgeslm.engines.llamacpp import imatrix as imx

    header = _header()
    for name, value in (("GGML_MAX_DIMS", imx.MAX_DIMS), ("GGML_MAX_SRC", imx.MAX_SRC),
                        ("GGML_MAX_OP_PARAMS", imx.MAX_OP_PARAMS), ("GGML_MAX_NAME", imx.MAX_NAME)):
        assert re.search(rf"#\s*define {name}\s+{value}\b", header), name
    body = re.search(r"struct ggml_tensor \{(.*?)\n    \};", header, re.S)
    assert body is not None
    members = re.findall(r"^\s*(?:const\s+)?[\w ]+?[\s*]+(\w+)(?:\[[^]]*\])?;", body.group(1), re.M)
    assert members == [f[0] for f in imx.GgmlTensor._fields_]
    overhead = imx._ggml().ggml_tensor_overhead
    overhead.restype = ctypes.c_size_t
    assert ctypes.sizeof(imx.GgmlTensor) == overhead() - 32  # ggml_tensor_overhead = GGML_OBJECT_SIZE (32) + tensor
    assert 0 < imx.op_number("MUL_MAT") < imx.op_number("MUL_MAT_ID")


@pytest.fixture
def tiny(cli: Any, tmp_path: Path, home: Path) -> Store:
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf")), "--name", "tiny").code == 0
    return Store.open(home / "models")


def _text(tmp_path: Path, words: int) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(" ".join(f"word{i % 97} and more text {i}" for i in range(words)))
    return path


def test_calibrate_then_quantize_with_it(cli: Any, tiny: Store, tmp_path: Path) -> None:
    done = cli("calibrate", "tiny", "--text", str(_text(tmp_path, 2000)), "--ctx", "64", "--chunks", "3")
    assert done.code == 0, done.err
    path = Path(done.out.strip())
    imatrix = read_imatrix(path)
    assert imatrix.chunk_count == 3 and imatrix.chunk_size == 64 and imatrix.datasets == ("text.txt",)
    assert imatrix.entries and all(n.startswith("blk.") for n in imatrix.entries)
    assert all((e.counts == 3 * 64).all() and (e.sums > 0).all() for e in imatrix.entries.values())
    refused = cli("quantize", "tiny", "--type", "iq2_xs")
    assert refused.code == 2 and "needs an importance matrix" in refused.err and "edgeslm calibrate tiny" in refused.err
    made = cli("quantize", "tiny", "--type", "iq2_xs,q2_k_s", "--imatrix", "tiny")
    assert made.code == 0, made.err
    variant = tiny.get(parse_name("tiny:iq2_xs"))
    assert variant.source["imatrix"].startswith("sha256-") and variant.source["imatrix_chunks"] == "3x64"
    shown = cli("show", "tiny:iq2_xs")
    assert "imatrix" in shown.out and "text.txt" in shown.out
    before = snapshot(tiny.root)
    embd = cli("quantize", "tiny", "--type", "q4_0", "--tensor-type", "token_embd=iq2_xs", "--imatrix", "tiny",
               "--tag", "embd")  # the imatrix has no entry for the embeddings: refused, not an abort
    assert embd.code == 2 and "token_embd.weight is to be IQ2_XS" in embd.err and "no entry for it" in embd.err
    embd = cli("quantize", "tiny", "--type", "q4_0", "--token-embedding-type", "iq2_xxs", "--imatrix", "tiny")
    assert embd.code == 2 and "token_embd.weight is to be IQ2_XXS" in embd.err
    assert snapshot(tiny.root) == before


def test_foreign_and_hostile_imatrix_files_change_nothing(cli: Any, tiny: Store, tmp_path: Path) -> None:
    good = tmp_path / "good.gguf"
    cli("calibrate", "tiny", "--text", str(_text(tmp_path, 2000)), "--ctx", "64", "--chunks", "2")
    real = read_imatrix(next((tiny.root / "imatrix").rglob("*.gguf")))
    name, entry = next(iter(real.entries.items()))
    write_imatrix(real, good)
    cases = {
        "other-model": Imatrix({"blk.0.attn_q.weight": Entry(np.ones((1, 7), np.float32), np.ones(1, np.float32))}),
        "other-name": Imatrix({"blk.99.ffn_up.weight": entry}),
        "nan": Imatrix({name: Entry(np.full_like(entry.sums, np.nan), entry.counts)}),
        "huge-count": Imatrix({name: Entry(entry.sums, np.full_like(entry.counts, 2.0**60))}),
    }
    before = snapshot(tiny.root)
    for label, imatrix in cases.items():
        write_imatrix(imatrix, tmp_path / f"{label}.gguf")
    data = good.read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "huge-array.gguf").write_bytes(data[:24] + (2**40).to_bytes(8, "little") + data[32:])
    for label in (*cases, "truncated", "huge-array"):
        result = cli("quantize", "tiny", "--type", "iq2_xs", "--imatrix", str(tmp_path / f"{label}.gguf"))
        assert result.code == 65 and "Traceback" not in result.err, (label, result.err)
    model = tiny.blob_path(tiny.get(parse_name("tiny")).digest)
    result = cli("quantize", "tiny", "--type", "iq2_xs", "--imatrix", str(model))  # a model, not an imatrix
    assert result.code == 65 and "not an importance matrix" in result.err
    assert {k: v for k, v in snapshot(tiny.root).items() if "imatrix" not in k} == {
        k: v for k, v in before.items() if "imatrix" not in k}
    with pytest.raises(InvalidModelFileError, match="not finite"):
        read_imatrix(tmp_path / "nan.gguf")


def _legacy(imatrix: Imatrix, chunk_size: int, tail: bytes | None = None) -> bytes:
    """llama-imatrix's --output-format dat (save_imatrix_legacy): sum / count x ncall per value."""
    out = bytearray(struct.pack("<i", len(imatrix.entries)))
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        ncall = int((e.counts.max() + chunk_size - 1) // chunk_size)
        values = (e.sums / e.counts[:, None] * np.float32(ncall)).astype("<f4").reshape(-1)
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size) + values.tobytes()
    return bytes(out) + (struct.pack("<ii", imatrix.chunk_count, 8) + b"text.txt" if tail is None else tail)


def test_a_legacy_dat_imatrix_reads_as_llama_quantize_reads_it(cli: Any, tiny: Store, tmp_path: Path) -> None:
    cli("calibrate", "tiny", "--text", str(_text(tmp_path, 2000)), "--ctx", "64", "--chunks", "2")
    real = read_imatrix(next((tiny.root / "imatrix").rglob("*.gguf")))
    dat = tmp_path / "imatrix.dat"
    dat.write_bytes(_legacy(real, 64))
    legacy = read_imatrix(dat)
    assert legacy.legacy and legacy.chunk_count == 2 and legacy.datasets == ("text.txt",)
    assert legacy.entries.keys() == real.entries.keys()
    for name, e in real.entries.items():
        np.testing.assert_allclose(legacy.entries[name].importance(), e.importance(), rtol=1e-6)
    made = cli("quantize", "tiny", "--type", "iq2_xs", "--imatrix", str(dat))
    assert made.code == 0, made.err
    assert tiny.get(parse_name("tiny:iq2_xs")).source["imatrix_chunks"] == "2x?"
    assert list((tiny.root / "imatrix").rglob("file-*.dat")), "the .dat file is kept as given"
    good = dat.read_bytes()
    name_len = struct.unpack_from("<i", good, 4)[0]
    nval_at = 4 + 4 + name_len + 4
    hostile = {
        "truncated": good[: len(good) // 2],
        "no-entries": struct.pack("<i", 0),
        "huge-count": struct.pack("<i", 2**30) + good[4:],
        "huge-nval": good[:nval_at] + struct.pack("<i", 2**31 - 1) + good[nval_at + 4 :],
        "negative-ncall": good[: nval_at - 4] + struct.pack("<i", -5) + good[nval_at:],
        "nan": good[: nval_at + 4] + struct.pack("<f", float("nan")) + good[nval_at + 8 :],
        "trailing": good + b"junk",
        "text": b"Hello, this is no importance matrix at all.\n",
    }
    before = snapshot(tiny.root)
    for label, data in hostile.items():
        (tmp_path / f"{label}.dat").write_bytes(data)
        result = cli("quantize", "tiny", "--type", "q2_k_s", "--imatrix", str(tmp_path / f"{label}.dat"))
        assert result.code == 65 and "Traceback" not in result.err, (label, result.err)
    assert snapshot(tiny.root) == before
    with pytest.raises(InvalidModelFileError, match="neither a GGUF importance matrix nor"):
        read_imatrix(tmp_path / "text.dat")


def test_short_texts_and_bad_chunks_are_refused(cli: Any, tiny: Store, tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("A few words only.\n")
    short = cli("calibrate", "tiny", "--text", str(tmp_path / "short.txt"), "--ctx", "64")
    assert short.code == 66 and "at least two chunks" in short.err
    assert cli("calibrate", "tiny", "--text", str(_text(tmp_path, 2000)), "--chunks", "0").code == 2
    assert cli("calibrate", "absent-model").code == 67
    assert not (tiny.root / "imatrix").exists()


@pytest.mark.slow
def test_ctrl_c_during_calibration_stores_nothing(tiny: Store, home: Path, tmp_path: Path) -> None:
    text = _text(tmp_path, 40000)
    cmd = edgeslm_command(home, "calibrate", "tiny", "--text", str(text), "--ctx", "64", interruptible=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)  # loading and tokenizing are done; chunks are being decoded
    assert proc.poll() is None, "calibration ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert not list((tiny.root / "imatrix").rglob("*.gguf")) and not list(tiny.tmp_dir.glob("imatrix-*"))


@pytest.mark.real_model
def test_smollm2s_importance_matrix_equals_an_independent_computation(builtin_home: Path, home: Path, cli: Any) -> None:
    """blk.0.attn_q's input is the RMS-normed token embedding: computed here from the file's own
    tensors with gguf-py, it must equal what the eval callback summed (llama-imatrix's figure is
    in benchmarks/imatrix_exact.py: within 1e-4 on every entry)."""
    import shutil

    from gguf import GGUFReader
    from gguf.quants import dequantize

    from edgeslm.engines.base import LoadParams
    from edgeslm.engines.llamacpp.engine import open_llamacpp

    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    done = cli("calibrate", SMOL, "--chunks", "2", "--json")
    assert done.code == 0, done.err
    import json

    imatrix = read_imatrix(Path(json.loads(done.out)["path"]))
    assert len(imatrix.entries) == 30 * 7 and all((e.counts == 1024).all() for e in imatrix.entries.values())
    store = Store.open(home / "models")
    path = store.gguf_path(store.get(parse_name(SMOL)), "test")
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    embd = dequantize(tensors["token_embd.weight"].data, tensors["token_embd.weight"].tensor_type)
    norm = np.asarray(tensors["blk.0.attn_norm.weight"].data, dtype=np.float32)
    engine = open_llamacpp(path, LoadParams(n_ctx=512))
    text = (Path(__file__).parents[1] / "edgeslm" / "data" / "wikitext-2-sample.txt").read_bytes().decode()
    tokens = engine.tokenize(text.removesuffix("\n"), add_special=True, parse_special=False)[:1024]
    engine.close()
    x = embd[tokens].astype(np.float32)
    y = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * norm
    expected = (y * y).sum(axis=0)
    got = imatrix.entries["blk.0.attn_q.weight"].sums[0]
    assert np.max(np.abs(got - expected) / expected) < 1e-4


def test_import_keeps_a_models_imatrix_or_neither(cli: Any, tiny: Store, tmp_path: Path, home: Path) -> None:
    assert cli("calibrate", "tiny", "--text", str(_text(tmp_path, 2000)), "--ctx", "64", "--chunks", "2").code == 0
    theirs = tmp_path / "tiny.imatrix.gguf"
    theirs.write_bytes(next((tiny.root / "imatrix").rglob("*.gguf")).read_bytes())
    wrong = tmp_path / "wrong.gguf"
    write_imatrix(Imatrix({"blk.0.attn_q.weight": Entry(np.ones((1, 7), np.float32), np.ones(1, np.float32))}), wrong)
    model = tmp_path / "tiny.gguf"
    refused = cli("import", str(model), "--name", "other", "--imatrix", str(wrong))
    assert refused.code == 65 and "not an importance matrix of tiny.gguf" in refused.err
    assert tiny.find(parse_name("other")) is None
    done = cli("import", str(model), "--name", "other", "--imatrix", str(theirs))
    assert done.code == 0 and "quantize --imatrix other" in done.err, done.err
    assert cli("quantize", "other", "--type", "iq2_xxs", "--imatrix", "other").code == 0
