"""Quantize through llama.cpp's quantizer into the store: types, lineage, guards, overrides."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeslm.errors import InvalidParameterError
from edgeslm.formats.gguf_header import read_gguf_header
from edgeslm.formats.quant_types import QUANT_TYPES, parse_quant_types

from .conftest import CliResult, edgeslm_command, snapshot, wait_for_partial
from .ggufbuild import write_tiny_model

Cli = Callable[..., CliResult]
BUILDABLE = [q for q in QUANT_TYPES if not QUANT_TYPES[q].needs_imatrix]


@pytest.fixture
def tiny(cli: Cli, tmp_path: Path) -> Cli:
    # Rows of 256 so that every block size (32, 64, 128, 256) fits; F16/F32 weights, as converted.
    path = write_tiny_model(tmp_path / "tiny.gguf", n_embd=256, n_vocab=512)
    assert cli("import", str(path), "--name", "tiny").code == 0
    return cli


def variants(cli: Cli) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in json.loads(cli("list", "tiny", "--json").out)}


def test_variants_are_stored_with_lineage(tiny: Cli) -> None:
    result = tiny("quantize", "tiny", "--type", "q8_0,Q4_0", "--json")
    assert result.code == 0, result.err
    built = {r["name"]: r for r in json.loads(result.out)}
    assert set(built) == {"tiny:q8_0", "tiny:q4_0"} and all(r["built"] for r in built.values())
    models = variants(tiny)
    parent = models["tiny:latest"]
    for tag, ggml in (("q8_0", "Q8_0"), ("q4_0", "Q4_0")):
        v = models[f"tiny:{tag}"]
        src = v["source"]
        assert src["kind"] == "quantize" and src["parent"] == parent["digest"] and src["requested"] == ggml.upper()
        assert src["parent_type"] == "F16" and src["llama_cpp"].startswith("llama-cpp-python")
        assert v["type_mix"][0]["ggml_type"] == ggml and v["size"] < parent["size"]
    shown = tiny("show", "tiny:q8_0").out
    assert "quantized from tiny:latest" in shown and "type asked    Q8_0" in shown and "parent type   F16" in shown
    again = json.loads(tiny("quantize", "tiny", "--type", "q8_0", "--json").out)
    assert again[0]["built"] is False  # an existing variant is kept...
    forced = json.loads(tiny("quantize", "tiny", "--type", "q8_0", "--force", "--json").out)
    assert forced[0]["built"] is True and forced[0]["digest"] == again[0]["digest"]  # ...and rebuilt identically
    assert tiny("verify").code == 0


def test_every_type_with_pure_gets_its_main_type(tiny: Cli) -> None:
    """The table's main type per recipe is what llama.cpp's quantizer gives every weight under --pure."""
    # --force: TQ1_0/TQ2_0 on these random (not ternary) weights, knowingly. IQ2_M's and IQ3_XXS's
    # tensors need an importance matrix in llama.cpp whenever rows take 256-blocks, as these do.
    buildable = [q for q in BUILDABLE if q not in ("IQ2_M", "IQ3_XXS")]
    result = tiny("quantize", "tiny", "--type", ",".join(buildable), "--pure", "--force", "--json")
    assert result.code == 0, result.err
    for name in ("iq2_m", "iq3_xxs"):
        refused = tiny("quantize", "tiny", "--type", name)
        assert refused.code == 2 and "needs an importance matrix" in refused.err and "nothing was stored" in refused.err
    for r in json.loads(result.out):
        qtype = QUANT_TYPES[r["requested"]]
        weights = {s["ggml_type"] for s in r["type_mix"]} - {"F32"}
        assert weights == {qtype.main_type.name} or (qtype.name == "F32" and not weights), r


def test_tensor_overrides(tiny: Cli, home: Path) -> None:
    result = tiny(
        "quantize",
        "tiny",
        "--type",
        "q4_0",
        "--tensor-type",
        r"attn_q=q8_0",
        "--token-embedding-type",
        "q6_k",
        "--json",
    )
    assert result.code == 0, result.err
    digest = json.loads(result.out)[0]["digest"]
    types = {t.name: t.ggml_type.name for t in read_gguf_header(home / "models" / "blobs" / digest).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.1.attn_q.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "Q6_K"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("--type", "q4_z"), 2, "unknown quantization type Q4_Z; valid: F32, F16"),
        (("--type", "iq2_xxs"), 2, "IQ2_XXS needs an importance matrix"),
        (("--type", "q8_0,iq2_xs"), 2, "IQ2_XS needs an importance matrix"),  # refused before q8_0 is built
        (("--type", "q4_0", "--tensor-type", "attn_q"), 2, "write PATTERN=TYPE"),
        (("--type", "q4_0", "--tensor-type", "([=q8_0"), 2, "not a valid regex"),
        (("--type", "q4_0", "--tensor-type", "attn_q=q9_9"), 2, "unknown tensor type"),
        (("--type", "q4_0", "--calibrate", "notes.txt"), 66, "notes.txt is not a text file"),
        (("--type", "q4_0", "--imatrix", "nothing-of-the-kind"), 66, "neither a file nor a stored model"),
    ],
)
def test_bad_requests_change_nothing(tiny: Cli, home: Path, args: tuple[str, ...], code: int, words: str) -> None:
    before = snapshot(home)
    result = tiny("quantize", "tiny", *args)
    assert result.code == code and words in result.err, result.err
    assert snapshot(home) == before


def test_requantize_needs_consent(tiny: Cli, home: Path) -> None:
    assert tiny("quantize", "tiny", "--type", "q8_0").code == 0
    before = snapshot(home)
    refused = tiny("quantize", "tiny:q8_0", "--type", "q4_0")
    assert refused.code == 2 and "already quantized (Q8_0)" in refused.err and "--allow-requantize" in refused.err
    assert snapshot(home) == before
    allowed = tiny("quantize", "tiny:q8_0", "--type", "q4_0,f16", "--allow-requantize")
    assert allowed.code == 0 and "error adds to the source's" in allowed.err
    assert {"tiny:q8_0", "tiny:q4_0"} <= set(variants(tiny))


def test_a_type_the_shapes_cannot_take(cli: Cli, tmp_path: Path) -> None:
    narrow = write_tiny_model(tmp_path / "narrow.gguf", n_embd=64)  # no row divisible by 256
    cli("import", str(narrow), "--name", "narrow")
    result = cli("quantize", "narrow", "--type", "q4_k_m")
    assert result.code == 2 and "block size 256" in result.err
    assert cli("quantize", "narrow", "--type", "q4_0").code == 0


def test_parse_quant_types() -> None:
    assert [q.name for q in parse_quant_types("q8_0, Q8_0,q4_k_m")] == ["Q8_0", "Q4_K_M"]
    with pytest.raises(InvalidParameterError):
        parse_quant_types(",")
    assert QUANT_TYPES["Q5_1"].bits_per_weight == 6.0 and QUANT_TYPES["TQ2_0"].ternary


@pytest.mark.real_model
def test_builtin_requantize_records_the_true_mix(builtin_home: Path, home: Path, cli: Cli) -> None:
    import shutil

    shutil.copytree(builtin_home, home)
    result = cli("quantize", "gemma3-270m", "--type", "q4_k_m,q8_0", "--allow-requantize", "--json")
    assert result.code == 0, result.err
    by_type = {r["requested"]: r for r in json.loads(result.out)}
    mix = {s["ggml_type"]: s["n_params"] for s in by_type["Q4_K_M"]["type_mix"]}
    assert max(mix, key=mix.__getitem__) != "Q4_K"  # Gemma's 640-wide rows do not take 256-blocks
    assert "asked for Q4_K_M but only" in result.err
    assert {s["ggml_type"] for s in by_type["Q8_0"]["type_mix"]} <= {"Q8_0", "F32"}


@pytest.mark.real_model
@pytest.mark.slow
def test_kill_during_quantize_leaves_no_variant(builtin_home: Path, tmp_path: Path, cli: Cli, home: Path) -> None:
    import hashlib
    import os
    import shutil
    import signal
    import subprocess

    shutil.copytree(builtin_home, home)
    parent = json.loads(cli("show", "smollm2-135m-instruct", "--json").out)
    cmd = edgeslm_command(home, "quantize", "smollm2-135m-instruct", "--type", "q8_0", "--allow-requantize")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_partial(home / "models" / "tmp", proc, min_size=1_000_000)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = cli("verify")
    assert result.code == 0 and "removed stale temp file" in result.err
    assert "smollm2-135m-instruct:q8_0" not in {m["name"] for m in json.loads(cli("list", "--json").out)}
    blob = Path(parent["path"])
    assert "sha256-" + hashlib.sha256(blob.read_bytes()).hexdigest() == parent["digest"]


def test_progress_per_tensor(tiny: Cli, home: Path) -> None:
    from edgeslm.formats.quant_types import QuantizeOptions
    from edgeslm.quantize import quantize
    from edgeslm.store import Store, parse_name

    seen: list[tuple[str, int, int, str]] = []
    quantize(
        Store.open(home / "models"),
        parse_name("tiny"),
        parse_quant_types("q8_0"),
        QuantizeOptions(),
        progress=lambda q, done, total, name: seen.append((q.name, done, total, name)),
    )
    n_tensors = len(read_gguf_header(next((home / "models" / "blobs").iterdir())).tensors)
    assert [s[1] for s in seen] == list(range(1, n_tensors + 1)) and {s[2] for s in seen} == {n_tensors}
    assert {s[3] for s in seen} >= {"token_embd.weight", "blk.0.attn_q.weight"} and {s[0] for s in seen} == {"Q8_0"}


def test_ternary_types_only_for_ternary_models(tiny: Cli, cli: Cli, tmp_path: Path) -> None:
    refused = tiny("quantize", "tiny", "--type", "tq2_0")
    assert refused.code == 2 and "weights are not ternary" in refused.err and "--force" in refused.err
    assert "% of their signal" in refused.err
    forced = tiny("quantize", "tiny", "--type", "tq1_0", "--force")
    assert forced.code == 0 and "expect TQ1_0 output to be broken" in forced.err
    bitnet = write_tiny_model(tmp_path / "bitnet.gguf", n_embd=256, n_vocab=512, ternary=True)
    cli("import", str(bitnet), "--name", "bitnet")
    ok = cli("quantize", "bitnet", "--type", "tq2_0,tq1_0", "--json")
    assert ok.code == 0 and "not ternary" not in ok.err
    assert {r["name"] for r in json.loads(ok.out)} == {"bitnet:tq2_0", "bitnet:tq1_0"}


def test_ternary_detection(tmp_path: Path) -> None:
    from edgeslm.formats.ternary import check_ternary

    for ternary in (True, False):
        path = write_tiny_model(tmp_path / f"t{ternary}.gguf", n_embd=256, ternary=ternary)
        report = check_ternary(path, read_gguf_header(path))
        assert report.ternary is ternary and report.tensors_checked == 2
        assert (report.relative_error < 1e-3) if ternary else (report.relative_error > 0.3)


@pytest.mark.parametrize("verb", ["quantize", "import"])
def test_full_disk_is_a_clear_error_and_nothing_half_written(tiny: Cli, home: Path, tmp_path: Path, verb: str) -> None:
    """A file-size limit stands in for a full disk: writes past it fail with EFBIG."""
    import resource
    import subprocess
    import sys

    big = write_tiny_model(tmp_path / "big.gguf", n_embd=512, n_vocab=2048, seed=4)  # ~2.6 MB
    before = snapshot(home)
    args = ["quantize", "tiny", "--type", "f32"] if verb == "quantize" else ["import", str(big), "--name", "big"]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    done = subprocess.run(
        [sys.executable, "-m", "edgeslm", "--home", str(home), *args],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (70, 74), done.stderr
    assert "nothing was stored" in done.stderr and "Traceback" not in done.stderr
    assert ("File too large" in done.stderr) or ("is the disk full" in done.stderr)
    assert snapshot(home) == before


def test_output_to_a_file(tiny: Cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-q8.gguf"
    before = snapshot(home)
    assert tiny("quantize", "tiny", "--type", "q8_0", "--output", str(out)).code == 0
    assert read_gguf_header(out).tensors and snapshot(home) == before  # nothing added to the store
    exists = tiny("quantize", "tiny", "--type", "q4_0", "--output", str(out))
    assert exists.code == 2 and "exists" in exists.err and "--force" in exists.err
    assert read_gguf_header(out).tensors[1].ggml_type.name in ("Q8_0", "F32")  # untouched
    assert tiny("quantize", "tiny", "--type", "q4_0,q8_0", "--output", str(tmp_path / "x.gguf")).code == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
