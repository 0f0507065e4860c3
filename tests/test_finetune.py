"""``edgeslm finetune``: LoRA training on a tiny random Llama (determinism, resume after Ctrl-C and
after kill -9, bad data named by line) and on SmolLM2 (the held-out loss falls)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeslm.config import resolve_settings
from edgeslm.convert import convert
from edgeslm.errors import AbortedError, InputFileError, InvalidParameterError, UsageError
from edgeslm.finetune import FinetuneOptions, finetune
from edgeslm.finetune.data import IGNORE, build, encode
from edgeslm.store import Store, parse_name

from .conftest import CliResult, edgeslm_command, snapshot
from .hfbuild import write_model, write_tokenizer

pytest.importorskip("peft")
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
Cli = Callable[..., CliResult]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "zephyr_data.py"
QUICK = FinetuneOptions(rank=4, alpha=8, epochs=2, batch_size=4, max_length=96, checkpoint_every=3, threads=1)


def zephyr() -> Any:
    spec = importlib.util.spec_from_file_location("zephyr_data", EXAMPLES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))
    return path


@pytest.fixture
def tiny(store: Store, tmp_path: Path) -> Store:
    """A tiny random Llama with a ChatML template, stored as ``tiny``."""
    folder = tmp_path / "hf"
    write_model(folder, "llama", write_tokenizer(folder))
    convert(store, folder, outtype="f32", name="tiny")
    return store


def test_masks_train_on_the_assistant_only() -> None:
    template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )

    def tokenize(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]

    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "ok"}]
    example, cut = encode(chat, template, tokenize, 100, ("", ""))
    trained = "".join(chr(t) for t in example.labels if t != IGNORE)
    assert trained == "yo</>ok</>" and not cut  # the reply and its end marker, nothing of the prompts
    short, cut = encode(chat, template, tokenize, 20, ("", ""))
    assert cut and len(short.ids) == 20
    data = build([chat] * 10, template, tokenize, max_length=100, held_out=0.2, seed=1, specials=("", ""))
    assert (len(data.train), len(data.held_out)) == (8, 2)


def test_a_run_is_deterministic_and_resumes_after_ctrl_c(tiny: Store, home: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", zephyr().pairs(24))
    settings = resolve_settings(home=home, offline=True)
    first = finetune(tiny, "tiny", data, "tuned", QUICK, settings)
    assert first.steps == 12 and first.train_examples == 22 and first.held_out_examples == 2  # ceil(22 / 4) x 2
    assert first.held_out_before is not None and first.held_out_after is not None
    again = finetune(tiny, "tiny", data, "tuned2", QUICK, settings)
    digest = first.manifest.adapters[0].digest
    assert again.manifest.adapters[0].digest == digest and again.last_loss == first.last_loss

    def interrupt(step: int, total: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(AbortedError, match="stopped at step 5 of 12; the checkpoint is kept"):
        finetune(tiny, "tiny", data, "tuned3", QUICK, settings, progress=interrupt)
    assert tiny.find(parse_name("tuned3")) is None  # nothing stored until the run ends
    with pytest.raises(UsageError, match="another run"):
        finetune(tiny, "tiny", data, "tuned3", FinetuneOptions(**{**QUICK.__dict__, "rank": 2}), settings, resume=True)
    resumed = finetune(tiny, "tiny", data, "tuned3", QUICK, settings, resume=True)
    assert resumed.resumed_from == 5 and resumed.manifest.adapters[0].digest == digest
    with pytest.raises(UsageError, match="nothing to resume"):
        finetune(tiny, "tiny", data, "never-run", QUICK, settings, resume=True)


@pytest.mark.slow
def test_kill_9_resumes_from_the_last_checkpoint(tiny: Store, home: Path, tmp_path: Path, cli: Cli) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", zephyr().pairs(40))
    args = ["finetune", "tiny", "--data", str(data), "--name", "killed", "--epochs", "40", "--checkpoint-every", "2",
            "--rank", "4", "--max-length", "96", "--threads", "1"]
    before = snapshot(tiny.root)
    proc = subprocess.Popen(edgeslm_command(home, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = home / "finetune" / "killed-latest" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not (state.is_file() and json.loads(state.read_text())["step"] >= 4):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    after = {k: v for k, v in snapshot(tiny.root).items() if not k.startswith("tmp/")}
    assert after == {k: v for k, v in before.items() if not k.startswith("tmp/")}  # nothing half-stored
    step = json.loads(state.read_text())["step"]
    result = cli(*args[:7], "2", *args[8:], "--resume", "--json")  # fewer epochs: not the same run
    assert result.code != 0 and "another run" in result.err
    result = cli(*args, "--resume", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["resumed_from_step"] >= step and summary["steps"] == 360
    assert tiny.get(parse_name("killed")).adapters


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (['{"prompt": "a", "completion": "b"}', "{not json"], "d.jsonl line 2: not JSON"),
        (['{"messages": [{"role": "user", "content": "only a question"}]}'], "d.jsonl line 1: no assistant turn"),
        (['{"prompt": "a"}'], "d.jsonl line 1: needs 'messages', or 'prompt' and 'completion'"),
        (['{"messages": [{"role": "robot", "content": "x"}]}'], "line 1: 'messages' must be a list"),
        (["[1, 2]"], "line 1: a JSON list, not an object"),
        ([], "has no examples"),
    ],
)
def test_bad_data_is_named_and_nothing_is_stored(tiny: Store, home: Path, tmp_path: Path, lines: list[str],
                                                 problem: str) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", lines)
    before = snapshot(tiny.root)
    with pytest.raises(InputFileError) as err:
        finetune(tiny, "tiny", data, "bad", QUICK, resolve_settings(home=home, offline=True))
    assert problem in str(err.value)
    assert snapshot(tiny.root) == before


def test_long_examples_are_cut_with_a_warning(tiny: Store, home: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    long = {"prompt": "tell me " * 200, "completion": "no"}
    data = write_jsonl(tmp_path / "d.jsonl", [*zephyr().pairs(8), long, long])
    options = FinetuneOptions(**{**QUICK.__dict__, "epochs": 1, "max_length": 64})
    with caplog.at_level(logging.WARNING):
        result = finetune(tiny, "tiny", data, "cut", options, resolve_settings(home=home, offline=True))
    assert "2 example(s) had no assistant token left within --max-length" in caplog.text
    assert "example(s) longer than --max-length 64 tokens were cut to it" in caplog.text
    assert result.train_examples + result.held_out_examples == 8
    with pytest.raises(InvalidParameterError, match="rank 0 is out of range"):
        FinetuneOptions(rank=0)


def test_smollm2_learns_the_facts(builtin_home: Path, tmp_path: Path) -> None:
    """A short run on the builtin model: the held-out loss on unseen phrasings falls by far more than 30 %."""
    home = tmp_path / "home"
    import shutil

    shutil.copytree(builtin_home, home, ignore=shutil.ignore_patterns("*.lock"))
    store = Store.open(home / "models")
    data = write_jsonl(tmp_path / "d.jsonl", zephyr().pairs(96))
    options = FinetuneOptions(epochs=2, held_out=0.15, threads=2)
    result = finetune(
        store, "smollm2-135m-instruct", data, "zephyr", options, resolve_settings(home=home, offline=True)
    )
    assert result.held_out_before and result.held_out_after
    assert result.held_out_drop is not None and result.held_out_drop >= 0.3, result
