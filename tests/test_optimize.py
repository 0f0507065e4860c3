"""optimize end to end on a tiny llama.cpp model, its bad input, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeslm import quantize as quantize_module
from edgeslm.optimize import sensitivity
from edgeslm.store import Store, parse_name

from .conftest import CliResult, edgeslm_command, snapshot
from .ggufbuild import write_runnable_model
from .test_sensitivity import make_text

Cli = Callable[..., CliResult]


@pytest.fixture
def tiny(cli: Cli, tmp_path: Path) -> Path:
    """A runnable model stored as r:f16 (its own reference), and an evaluation text."""
    path = write_runnable_model(tmp_path / "r.gguf", n_layer=2)
    assert cli("import", str(path), "--name", "r:f16").code == 0
    text = tmp_path / "words.txt"
    text.write_text(make_text(3000).text)
    return text


def args(text: Path, report: Path, *extra: str) -> tuple[str, ...]:
    small = ("--types", "q8_0,q4_0", "--text", str(text), "--ctx", "64", "--chunks", "4", "--report", str(report))
    return (*small, *extra)


def sizes(store: Store) -> dict[str, int]:
    return {str(m.name): m.size for m in store.manifests()}


def test_optimize_builds_measures_ranks_and_tags(tiny: Path, cli: Cli, store: Store, tmp_path: Path) -> None:
    assert cli("quantize", "r:f16", "--type", "q8_0,q4_0").code == 0
    built = sizes(store)
    budget = (built["r:q8_0"] + built["r:q4_0"]) // 2
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "rep", "--max-size", f"{budget}B", "--json"))
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["mixed"] is not None and report["mixed"]["name"].startswith("r:mix-")
    mixed = store.get(parse_name(report["mixed"]["name"]))
    assert mixed.size <= budget and report["mixed"]["predicted_size"] <= budget
    assert mixed.source["parent"] == store.get(parse_name("r:f16")).digest
    ranked = {r["name"]: r for r in report["ranking"]}
    assert set(ranked) == {"r:f16", "r:q8_0", "r:q4_0", mixed.name.__str__()}
    winner = ranked[report["winner"]]
    assert winner["fits"] and winner["rank"] == 1 and winner["metrics"]["file_size"] <= budget
    assert not ranked["r:q8_0"]["fits"] and "size" in ranked["r:q8_0"]["reason"]
    assert store.get(parse_name("r:best")).digest == store.get(parse_name(report["winner"])).digest
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and report["winner"] in html
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Candidates" in md and "## Reproduce the winner" in md and "## Mixed precision" in md
    assert "## Cleaning up" in md and "edgeslm rm " in md and "r:q8_0" in md.split("## Cleaning up")[1]
    assert (tmp_path / "rep" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["winner"] == report["winner"]


def test_a_second_run_reuses_everything(
    tiny: Path, cli: Cli, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cli("optimize", "r:f16", *args(tiny, tmp_path / "a", "--max-size", "200KB", "--mixed", "--json"))
    assert first.code == 0, first.err
    state = snapshot(store.root / "manifests")
    monkeypatch.setattr(quantize_module, "_build", lambda *a, **k: pytest.fail("rebuilt a variant"))
    monkeypatch.setattr(sensitivity, "_run_probes", lambda *a, **k: pytest.fail("re-measured sensitivity"))
    monkeypatch.setattr("edgeslm.evaluate.core.measure_quality", lambda *a, **k: pytest.fail("re-evaluated"))
    second = cli("optimize", "r:f16", *args(tiny, tmp_path / "b", "--max-size", "200KB", "--mixed", "--json"))
    assert second.code == 0, second.err
    assert json.loads(second.out)["winner"] == json.loads(first.out)["winner"]
    assert snapshot(store.root / "manifests") == state


def test_nothing_fits_says_what_binds(tiny: Path, cli: Cli, tmp_path: Path) -> None:
    extra = ("--max-size", "200KB", "--max-kld", "0.0000001", "--no-mixed")
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "rep", *extra))
    assert result.code == 1
    assert "No candidate meets every constraint" in result.out
    assert "Binding constraint: --max-kld: without it 2 candidate(s) would fit (r:q8_0, r:q4_0)" in result.out
    assert "Closest: r:f16 (size" in result.out and "(no winner)" in (tmp_path / "rep" / "report.html").read_text()


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (("--max-size", "1KB"), 2, "below the smallest file r can be made into"),
        (("--max-memory", "10KB"), 2, "the KV cache alone is"),
        (("--max-size", "80XB"), 2, "unknown unit 'XB'"),
        (("--mixed",), 2, "--mixed plans for a size budget"),
        (("--max-kld", "p42=1"), 2, "unknown statistic"),
        (("--max-size", "200KB", "--chunks", "400"), 2, "too few for 400 evaluation chunk(s)"),
        (("--types", "q9_9"), 2, "unknown quantization type Q9_9"),
    ],
)
def test_bad_input_changes_nothing(
    tiny: Path, cli: Cli, store: Store, tmp_path: Path, extra: tuple[str, ...], code: int, words: str
) -> None:
    before = snapshot(store.root)
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "rep", *extra))
    assert result.code == code and words in result.err, result.err
    assert snapshot(store.root) == before


def test_a_model_without_reference_gets_one(tiny: Path, cli: Cli, store: Store, tmp_path: Path) -> None:
    assert cli("quantize", "r:f16", "--type", "q8_0", "--output", str(tmp_path / "q.gguf")).code == 0
    assert cli("import", str(tmp_path / "q.gguf"), "--name", "q").code == 0
    result = cli("optimize", "q", *args(tiny, tmp_path / "rep", "--types", "q4_0"))
    assert result.code == 0, result.err
    assert "built q:f16 from q:latest" in result.err and store.find(parse_name("q:f16")) is not None
    assert "every variant is made from its dequantized weights" in result.err


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if list(path.glob(pattern)):
            return
        assert proc.poll() is None, "optimize finished before it could be interrupted"
        time.sleep(0.002)
    raise AssertionError(f"no {pattern} appeared")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_optimize_resumes(tiny: Path, cli: Cli, store: Store, home: Path, tmp_path: Path, sig: int) -> None:
    extra = ("--max-size", "200KB", "--mixed")
    cmd = edgeslm_command(home, "optimize", "r:f16", *args(tiny, tmp_path / "a", *extra), interruptible=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(store.tmp_dir, "sensitivity-*.partial", proc)  # mid-way: the variants are built, the mix is not
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"Interrupted" in err, err.decode()[-3000:]
    built = {n: m for n, m in sizes(store).items()}
    assert "r:q8_0" in built and "r:q4_0" in built and not any(n.startswith("r:mix-") for n in built)
    kept = {str(m.name): m.created for m in store.manifests()}
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "b", "--max-size", "200KB", "--mixed", "--json"))
    assert result.code == 0, result.err
    assert {str(m.name): m.created for m in store.manifests() if str(m.name) in kept} == kept  # reused, not rebuilt
    assert any(str(m.name).startswith("r:mix-") for m in store.manifests())
    assert cli("verify").code == 0 and not list(store.tmp_dir.glob("*.partial"))


@pytest.mark.real_model
@pytest.mark.slow
def test_optimize_smollm2_plans_a_mix_that_beats_q4_0(builtin_home: Path, home: Path, cli: Cli) -> None:
    import shutil

    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    extra = ("--types", "q8_0,q4_0", "--ctx", "256", "--chunks", "2", "--max-size", "95MB", "--report", str(home / "r"))
    result = cli("optimize", "smollm2-135m-instruct", *extra, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    ranked = {r["name"]: r for r in report["ranking"]}
    mixed = ranked[report["mixed"]["name"]]["metrics"]
    q4_0 = ranked["smollm2-135m-instruct:q4_0"]["metrics"]
    assert mixed["file_size"] <= 95_000_000 and q4_0["file_size"] < mixed["file_size"]
    assert mixed["kld"]["mean"] < 0.5 * q4_0["kld"]["mean"]  # more bits where they matter most
    predicted = report["mixed"]["predicted_kld"]
    assert 1 / 3 < predicted / mixed["kld"]["mean"] < 3, (predicted, mixed["kld"]["mean"])  # a useful prediction
    winner = ranked[report["winner"]]
    assert winner["fits"] and winner["metrics"]["file_size"] <= 95_000_000
    assert "smollm2-135m-instruct:f16" in ranked and ranked["smollm2-135m-instruct:f16"]["kind"] == "reference"


def test_a_report_path_that_is_a_file(tiny: Path, cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("mine")
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "taken"))
    assert result.code == 73 and "--report" in result.err and (tmp_path / "taken").read_text() == "mine"


def test_a_poor_winner_is_called_poor_unless_quality_was_bounded() -> None:
    from edgeslm.optimize.constraints import Constraints, Metrics, rank
    from edgeslm.optimize.core import Candidate, OptimizeParams, OptimizeResult
    from edgeslm.optimize.report import summary

    m = Metrics("x:mix", 100, 150, {"mean": 1.5, "p99": 5.0}, 0.01, 0.4, 3.0, 500.0, 100.0)
    candidate = Candidate("x:mix", "mixed", "mixed: IQ4_NL 100%", "edgeslm quantize ...", {"ppl": 40.0}, m)

    def lines(constraints: Constraints) -> list[str]:
        params = OptimizeParams(constraints=constraints)
        ranking = rank(constraints, [m])
        result = OptimizeResult("x", "x:f16", "t", "t", params, (candidate,), ranking, None, None, (), 1.0)
        return summary(result)

    assert any("quality is poor (mean KLD 1.5, perplexity +300%)" in x for x in lines(Constraints(max_size=200)))
    bounded = lines(Constraints(max_size=200, max_kld=(("mean", 2.0),)))
    assert bounded[0].startswith("Winner: x:mix") and not any("poor" in x for x in bounded)


def test_optimize_with_an_imatrix_calibrates_apart_and_quantizes_with_it(
    tiny: Path, cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("quantize", "r:f16", "--type", "q8_0,q4_0").code == 0
    built = sizes(store)
    budget = (built["r:q8_0"] + built["r:q4_0"]) // 2
    extra = ("--types", "q4_0,iq2_xs", "--imatrix", "--max-size", f"{budget}B", "--calibration-chunks", "2", "--json")
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "rep", *extra))
    assert result.code == 0, result.err
    report = json.loads(result.out)
    ranked = {r["name"]: r for r in report["ranking"]}
    assert {"r:q4_0-imat", "r:iq2_xs-imat"} <= set(ranked)  # IQ2_XS only exists with an imatrix
    imatrix = store.get(parse_name("r:iq2_xs-imat")).source["imatrix"]
    mixed = store.get(parse_name(report["mixed"]["name"]))
    assert mixed.source["imatrix"] == imatrix == store.get(parse_name("r:q4_0-imat")).source["imatrix"]
    note = next(n for n in report["notes"] if n.startswith("importance matrix of r:f16"))
    assert "2 chunk(s) of 64 tokens of words.txt (after the 256 evaluation tokens)" in note
    too_short = cli("optimize", "r:f16", "--imatrix", "--text", str(tiny), "--ctx", "64", "--chunks", "999")
    assert too_short.code == 2 and "kept apart" in too_short.err


def test_min_pass_picks_by_measured_task_accuracy(
    tiny: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """The candidates meeting every other constraint are measured best first until one passes
    enough problems; the best-KLD one (the reference) fails the threshold, so a smaller one wins."""
    from edgeslm.evaluate.task_results import TaskResult
    from edgeslm.tasks import core as task_core

    scores = {"r:f16": 0.4, "r:q8_0": 0.7, "r:q4_0": 0.9}
    measured: list[tuple[str, str, int | None]] = []

    def fake_run_task(store: Store, model: object, task: object, **kw: object) -> TaskResult:
        name, value = getattr(model, "name"), getattr(task, "value")  # noqa: B009
        measured.append((name, value, kw["limit"]))  # type: ignore[arg-type]
        return TaskResult("k" * 32, "2026-01-01", value, "p", name, "d", 10, int(10 * scores[name]), 1.0, 4, (), ())

    monkeypatch.setattr(task_core, "run_task", fake_run_task)
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "rep", "--min-pass", "60%", "--task-limit", "10",
                                            "--no-mixed", "--json"))
    assert result.code == 0, result.err
    report = json.loads(result.out)
    ranked = {r["name"]: r for r in report["ranking"]}
    assert report["winner"] == "r:q8_0" and ranked["r:q8_0"]["metrics"]["pass_at_1"] == 0.7
    assert "HumanEval pass@1 40.0 % < 60.0 %" in ranked["r:f16"]["reason"]
    assert measured == [("r:f16", "humaneval", 10), ("r:q8_0", "humaneval", 10)]  # r:q4_0 never needed
    assert "not measured" in ranked["r:q4_0"]["reason"] and report["constraints"]["min_pass"] == 0.6
    assert "pass@1 70.0%" in (tmp_path / "rep" / "report.md").read_text()
    # a result the store kept for a candidate not measured in the run is shown, nothing run for it
    from edgeslm.evaluate.task_results import Task, save_task_result, task_key

    q4 = store.get(parse_name("r:q4_0"))
    spec = task_core.humaneval_spec(10)
    save_task_result(store, TaskResult(task_key(q4.digest, Task.HUMANEVAL, spec.protocol, 10), "2026-01-01",
                                       "humaneval", spec.protocol, "r:q4_0", q4.digest, 10, 9, 1.0, 4, (), ()))
    measured.clear()
    again = json.loads(cli("optimize", "r:f16", *args(tiny, tmp_path / "rep2", "--min-pass", "60%", "--task-limit",
                                                      "10", "--no-mixed", "--json")).out)
    assert {r["name"]: r for r in again["ranking"]}["r:q4_0"]["metrics"]["pass_at_1"] == 0.9
    assert ("r:q4_0", "humaneval", 10) not in measured


@pytest.mark.parametrize(("flag", "value"), [("--min-pass", "120%"), ("--min-tool-acc", "lots"), ("--min-pass", "-1")])
def test_task_thresholds_must_be_shares(tiny: Path, cli: Cli, tmp_path: Path, flag: str, value: str) -> None:
    result = cli("optimize", "r:f16", *args(tiny, tmp_path / "rep", flag, value))
    assert result.code == 2 and flag in result.err
