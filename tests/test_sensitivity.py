"""Sensitivity: probes, the per-tensor split, and measurement on a real (tiny) llama.cpp model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgeslm.errors import InvalidParameterError
from edgeslm.evaluate.core import EvalText
from edgeslm.formats.gguf_header import read_gguf_header
from edgeslm.optimize import sensitivity
from edgeslm.optimize.mixed import find_slots
from edgeslm.optimize.sensitivity import (
    NOISE,
    CalibrationParams,
    make_probes,
    measure_sensitivity,
    per_unit_sensitivity,
)
from edgeslm.store import Store, parse_name

from .conftest import CliResult
from .ggufbuild import write_runnable_model

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def make_text(n_words: int, seed: int = 0) -> EvalText:
    import random

    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(n_words))
    return EvalText("words.txt", text, "sha256-" + hashlib.sha256(text.encode()).hexdigest())


@pytest.fixture
def runnable(store: Store, tmp_path: Path, cli: object) -> Store:
    path = write_runnable_model(tmp_path / "r.gguf", n_layer=3)
    result: CliResult = cli("import", str(path), "--name", "r:f16")  # type: ignore[operator]
    assert result.code == 0, result.err
    return store


def test_probes_and_the_split(tmp_path: Path) -> None:
    slots = find_slots(read_gguf_header(write_runnable_model(tmp_path / "m.gguf", n_layer=3)))
    probes = make_probes(slots)
    labels = [p.label for p in probes]
    assert labels[:2] == ["group blk.0 attn", "group blk.0 ffn"] and "tensor token_embd" in labels
    assert sum(1 for x in labels if x.startswith("kind ")) == 7
    measured = {p.label: 0.01 * (i + 1) for i, p in enumerate(probes)}
    per_unit = per_unit_sensitivity(slots, probes, measured)
    for p in probes:  # each group's tensors add back up to what the group measured
        if not p.label.startswith("kind "):
            assert sum(per_unit[n] for n in p.tensors) * NOISE == pytest.approx(measured[p.label])
    # within a group, a kind measured as more sensitive gets the larger share
    q, v = per_unit["blk.1.attn_q.weight"], per_unit["blk.1.attn_v.weight"]
    assert (q < v) == (measured["kind attn_q"] < measured["kind attn_v"])


def test_measure_on_a_real_model_is_kept_and_resumed(runnable: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = runnable.get(parse_name("r:f16"))
    text = make_text(3000)
    params = CalibrationParams(ctx=128, chunks=2)
    seen: list[str] = []
    result = measure_sensitivity(runnable, ref, text, params, progress=lambda d, t, label: seen.append(label))
    assert len(result.measured) == len(make_probes(find_slots(read_gguf_header(runnable.blob_path(ref.digest)))))
    assert all(v > 0 for v in result.measured.values()), result.measured
    assert result.tokens == 2 * 63 and len(seen) == len(result.measured) + 1
    assert set(result.per_unit) == set(result.errors)
    assert not list(runnable.tmp_dir.iterdir())  # the scratch copy is gone
    # a second call measures nothing: everything is kept
    monkeypatch.setattr(sensitivity, "_run_probes", lambda *a, **k: pytest.fail("re-measured"))
    again = measure_sensitivity(runnable, ref, text, params)
    assert again.measured == result.measured


def test_noise_is_restored_between_probes(runnable: Store) -> None:
    """Measuring one probe twice in a row gives the same KLD: the scratch is restored after each."""
    ref = runnable.get(parse_name("r:f16"))
    text = make_text(2000, seed=1)
    first = measure_sensitivity(runnable, ref, text, CalibrationParams(ctx=64, chunks=1))
    for cached in (runnable.root / "results").glob("sensitivity-*.json"):
        cached.unlink()
    second = measure_sensitivity(runnable, ref, text, CalibrationParams(ctx=64, chunks=1))
    assert second.measured == pytest.approx(first.measured, rel=1e-5)


def test_calibration_must_not_touch_the_evaluation_chunks(runnable: Store) -> None:
    ref = runnable.get(parse_name("r:f16"))
    with pytest.raises(InvalidParameterError, match="too few for 2 calibration chunk"):
        measure_sensitivity(runnable, ref, make_text(150), CalibrationParams(ctx=128, chunks=2), reserved_tokens=512)


def test_a_quantized_reference_is_refused(runnable: Store, cli: object) -> None:
    assert cli("quantize", "r:f16", "--type", "q8_0").code == 0  # type: ignore[operator]
    ref = runnable.get(parse_name("r:q8_0"))
    with pytest.raises(InvalidParameterError, match=r"needs an F16, BF16 or F32 reference.*quantize r --type f16"):
        measure_sensitivity(runnable, ref, make_text(500), CalibrationParams(ctx=64))
