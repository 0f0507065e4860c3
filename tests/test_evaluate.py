"""Evaluation: llama-perplexity's statistics, lockstep KLD, kept results, bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeslm.evaluate.stats import Accumulator, percentile, summarize

from .conftest import CliResult, snapshot
from .ggufbuild import write_tiny_model

Cli = Callable[..., CliResult]


def reference_stats(logits: np.ndarray, ref: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The same statistics, written plainly from their definitions."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))

    lq, lp = log_softmax(logits), log_softmax(ref)
    idx = np.arange(len(targets))
    nll, nll_base = -lq[idx, targets], -lp[idx, targets]
    kld = (np.exp(lp) * (lp - lq)).sum(1)
    n = len(targets)
    se = lambda v: math.sqrt(v.var() / (n - 1))  # noqa: E731 - population variance / (n - 1), as llama.cpp
    cov = np.mean(nll * nll_base) - nll.mean() * nll_base.mean()
    return {
        "ppl": math.exp(nll.mean()), "ppl_base": math.exp(nll_base.mean()), "kld_mean": kld.mean(),
        "kld_err": se(kld), "ln_ppl_ratio": nll.mean() - nll_base.mean(),
        "ln_ppl_ratio_err": math.sqrt(se(nll) ** 2 + se(nll_base) ** 2 - 2 * cov / (n - 1)),
        "same_top": float(np.mean(logits.argmax(1) == ref.argmax(1))),
        "dp_mean": float(np.mean(np.exp(-nll) - np.exp(-nll_base))),
    }


def test_statistics_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 50)).astype(np.float32) * 3
    logits = (ref + rng.standard_normal((300, 50)).astype(np.float32)).astype(np.float32)
    targets = rng.integers(0, 50, 300)
    acc = Accumulator()
    acc.add(logits[:100], targets[:100], ref[:100])  # in pieces, as chunks arrive
    acc.add(logits[100:], targets[100:], ref[100:])
    ours, expected = summarize(acc), reference_stats(logits, ref, targets)
    for key, value in expected.items():
        # float32 element work (as llama.cpp), float64 sums: agreement to float32 precision
        assert ours[key] == pytest.approx(value, rel=2e-6, abs=1e-7), key
    assert ours["tokens"] == 300 and ours["kld"]["min"] >= -1e-12  # type: ignore[index]


def test_percentiles_interpolate_like_llama_perplexity() -> None:
    v = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    assert percentile(v, 0.5) == 2.0 and percentile(v, 0.999) == pytest.approx(3 + 0.996 * 7)
    assert percentile(v, 0.0) == 0.0 and percentile(v, 1.0) == 10.0


@pytest.fixture
def fake(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("EDGESLM_ENGINE", "fake")
    for name, extra in (("m", {}), ("m2", {"fake.reply": "x"}), ("other", {"fake.n_vocab": 300})):
        path = write_tiny_model(tmp_path / f"{name}.gguf", extra=dict(extra))
        assert cli("import", str(path), "--name", name).code == 0
    return cli


def expected_fake_ppl(text: bytes, ctx: int, chunks: int) -> float:
    """The fake engine puts logit 4 on the current byte: p(next) = e^4/(e^4+256) if it repeats."""
    hit, miss = 4 - math.log(math.exp(4) + 256), -math.log(math.exp(4) + 256)
    nll = []
    for c in range(chunks):
        chunk = text[c * ctx : (c + 1) * ctx]
        for i in range(ctx // 2, ctx - 1):
            nll.append(-(hit if chunk[i + 1] == chunk[i] else miss))
    return math.exp(sum(nll) / len(nll))


def test_eval_fake_model_ppl_and_self_reference(fake: Cli, tmp_path: Path) -> None:
    text = (b"aab" * 400 + b"abcc" * 300)[:2000]
    (tmp_path / "t.txt").write_bytes(text)

    def run(name: str, *extra: str) -> dict[str, object]:
        args = ("--reference", "m2", "--text", str(tmp_path / "t.txt"), "--ctx", "64", "--no-speed", "--json")
        result = fake("eval", name, *args, *extra)
        assert result.code == 0, result.err
        return json.loads(result.out)[0]  # type: ignore[no-any-return]

    r = run("m")
    assert r["chunks"] == 2000 // 64 and r["tokens"] == (2000 // 64) * 31
    assert r["ppl"] == pytest.approx(expected_fake_ppl(text, 64, 2000 // 64), rel=1e-6)
    assert r["kld_mean"] == pytest.approx(0, abs=1e-7) and r["same_top"] == 1.0  # same predictions
    assert run("m")["created"] == r["created"]  # kept, not re-run
    forced = run("m", "--force")
    assert forced["key"] == r["key"] and forced["ppl"] == r["ppl"]
    assert fake("cp", "m", "m-copy").code == 0  # same bytes, another name: the kept result is shared
    copy = run("m-copy")
    assert copy["model"] == "m-copy:latest" and copy["key"] == r["key"]
    table = fake("compare", "m", "m-copy", "m2")
    assert table.code == 0 and "m:latest" in table.out and "m-copy:latest" in table.out
    png = tmp_path / "plot.png"
    assert fake("compare", "m", "--plot", str(png)).code == 0 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("--text", "EMPTY"), 66, "is empty"),
        (("--text", "SHORT"), 2, "one chunk at --ctx 64 needs 64"),
        (("--text", "LATIN1"), 66, "is not UTF-8 text"),
        (("--text", "MISSING"), 66, "is not a text file"),
        (("--reference", "other"), 2, "do not share a vocabulary"),
        (("--ctx", "100000"), 2, "longer than m:latest's context of 256"),
        (("--chunks", "0"), 2, "chunks=0 is out of range"),
    ],
)
def test_bad_input(fake: Cli, home: Path, tmp_path: Path, args: tuple[str, ...], code: int, words: str) -> None:
    files = {"EMPTY": b"  \n", "SHORT": b"only a few words", "LATIN1": "café".encode("latin-1") * 100}
    for key, data in files.items():
        (tmp_path / key).write_bytes(data)
    args = tuple(str(tmp_path / a) if a in (*files, "MISSING") else a for a in args)
    if "--reference" not in args:
        args = (*args, "--reference", "m2")
    if "--text" not in args:
        args = (*args, "--text", str(tmp_path / "EMPTY").replace("EMPTY", "long.txt"))
        (tmp_path / "long.txt").write_bytes(b"abc " * 100)
    before = snapshot(home)
    result = (
        fake("eval", "m", "--ctx", "64", *args, "--no-speed")
        if "--ctx" not in args
        else fake("eval", "m", *args, "--no-speed")
    )
    assert result.code == code and words in result.err, result.err
    assert snapshot(home) == before


@pytest.mark.real_model
def test_kld_orders_the_variants_of_a_real_model(builtin_home: Path, home: Path, cli: Cli) -> None:
    import shutil

    shutil.copytree(builtin_home, home)
    assert cli("quantize", "smollm2-135m-instruct", "--type", "f16,q8_0,q5_1,q4_0", "--allow-requantize").code == 0
    kld = {}
    for tag in ("q4_0", "q5_1", "q8_0", "f16"):
        out = cli(
            "eval",
            f"smollm2-135m-instruct:{tag}",
            "--reference",
            "smollm2-135m-instruct",
            "--chunks",
            "2",
            "--no-speed",
            "--json",
        )
        assert out.code == 0, out.err
        kld[tag] = json.loads(out.out)[0]["kld_mean"]
    assert kld["q4_0"] > kld["q5_1"] > kld["q8_0"] > kld["f16"]
    assert kld["f16"] < 0.01 and kld["q4_0"] > 0.1  # F16 of the Q4_1 source is nearly the source itself


def test_a_kept_result_reads_back_as_the_same_record(
    fake: Cli, tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgeslm.evaluate import EvalResult, all_results
    from edgeslm.evaluate.kept import results_dir
    from edgeslm.store import Store

    (tmp_path / "t.txt").write_bytes((b"aab" * 400)[:1000])
    args = ("--reference", "m2", "--text", str(tmp_path / "t.txt"), "--ctx", "64", "--no-speed", "--json")
    assert fake("eval", "m", *args).code == 0
    store = Store.open(home / "models")
    (kept,) = [r for r in all_results(store) if r.model == "m:latest"]
    assert isinstance(kept, EvalResult) and kept.has_reference and kept.speed is None
    assert EvalResult.from_dict(json.loads(json.dumps(kept.to_dict()))) == kept
    stored = json.loads((results_dir(store) / f"{kept.key}.json").read_text())
    assert stored["kld_mean"] == kept.kld_mean and stored["schema"] == 1  # the keys results always had
    (results_dir(store) / f"{'0' * 32}.json").write_text('{"model": "x"}')  # a required key missing: skipped
    (results_dir(store) / f"sensitivity-{'1' * 32}.json").write_text("{}")  # optimize's: not a result, not read
    with caplog.at_level("WARNING"):
        assert len(all_results(store)) == 1
    broken = results_dir(store) / f"{'0' * 32}.json"
    assert [r.getMessage() for r in caplog.records] == [f"skipping unreadable result {broken}"]


def test_compare_shows_kept_task_accuracy_beside_kld(fake: Cli, home: Path, tmp_path: Path) -> None:
    from edgeslm.evaluate.task_results import Answer, TaskResult, save_task_result
    from edgeslm.store import Store, parse_name

    text = tmp_path / "t.txt"
    text.write_bytes((b"aab" * 400)[:1000])
    assert fake("eval", "m", "--reference", "m2", "--text", str(text), "--ctx", "64", "--no-speed").code == 0
    assert fake("cp", "m", "m-copy").code == 0
    store = Store.open(home / "models")
    m = store.get(parse_name("m"))
    answers = tuple(Answer(f"HumanEval/{i}", i < 6, "passed", "", 1, "stop", 0.0) for i in range(10))
    save_task_result(store, TaskResult("a" * 32, "2026-01-01T00:00:00+00:00", "humaneval", "p/1", "m:latest",
                                       m.digest, 10, 6, 1.0, 4, ("rlimits",), answers))
    table = fake("compare", "m", "m-copy")
    assert table.code == 0 and "pass@1" in table.out and table.out.count("60.0% (10)") == 2  # shared by content
    shown = json.loads(fake("compare", "m", "m-copy", "--json").out)
    assert shown[0]["tasks"]["humaneval"]["score"] == 0.6 and "tools" not in shown[0]["tasks"]
    png = tmp_path / "plot.png"
    assert fake("compare", "m", "m-copy", "--plot", str(png)).code == 0 and png.read_bytes()[:4] == b"\x89PNG"
