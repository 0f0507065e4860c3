"""``edgeslm finetune``: a LoRA adapter trained on the CPU with transformers + peft, from a stored model.

The stored model is exported to a Hugging Face folder (float32, once per base), the data rendered
with its chat template (``data``), a LoRA trained with AdamW and a linear decay, and the adapter
converted to a GGUF LoRA and stored as a model of its own (the base plus the adapter) through
``create``. Every ``checkpoint_every`` steps, at each epoch's end and on Ctrl-C the run writes a
checkpoint (adapter, optimizer, schedule, random states) into a temp folder and renames it into
place, so a ``kill -9`` leaves the previous one; ``resume`` continues from it, on the same data and
options only. With one seed and one thread count, a run (resumed or not) gives the same adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..engines.base import physical_cores
from ..errors import AbortedError, InvalidParameterError, MissingExtraError, UsageError
from ..store import Store, parse_name
from ..store.records import Manifest
from .data import IGNORE, Dataset, Example, build, read_chats

log = logging.getLogger(__name__)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Progress = Callable[[int, int, float], None]  # step, total steps, this step's loss


@dataclass(frozen=True)
class FinetuneOptions:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 4
    max_length: int = 512
    held_out: float = 0.1
    seed: int = 0
    checkpoint_every: int = 50
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.rank <= 256, "rank", "1 to 256"), (0 < self.alpha <= 4096, "alpha", "above 0, at most 4096"),
            (0 <= self.dropout < 1, "dropout", "0 to below 1"), (0 < self.learning_rate <= 1, "learning_rate",
            "above 0, at most 1"), (1 <= self.epochs <= 1000, "epochs", "1 to 1000"),
            (1 <= self.batch_size <= 1024, "batch_size", "1 to 1024"), (16 <= self.max_length <= 32768, "max_length",
            "16 to 32768"), (1 <= self.checkpoint_every <= 10**6, "checkpoint_every", "1 to 1,000,000"),
            (bool(self.target_modules), "target_modules", "at least one module name"),
        ]
        for ok, name, valid in checks:
            if not ok:
                raise InvalidParameterError(f"{name} {getattr(self, name)!r} is out of range; valid: {valid}",
                                            params=name)


@dataclass(frozen=True)
class FinetuneResult:
    name: str
    base: str
    steps: int
    train_examples: int
    held_out_examples: int
    held_out_before: float | None  # mean loss per assistant token
    held_out_after: float | None
    last_loss: float
    seconds: float
    resumed_from: int
    truncated: int
    manifest: Manifest = field(repr=False)

    @property
    def held_out_drop(self) -> float | None:
        if self.held_out_before is None or self.held_out_after is None or self.held_out_before <= 0:
            return None
        return 1 - self.held_out_after / self.held_out_before


def _torch() -> Any:
    try:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise MissingExtraError("finetune needs torch, transformers and peft: pip install 'edgeslm[train]'") from None
    return torch


def finetune(store: Store, base_name: str, data: Path, name: str, options: FinetuneOptions, settings: Settings, *,
             resume: bool = False, progress: Progress | None = None) -> FinetuneResult:
    """Train a LoRA on ``data`` for the stored model ``base_name`` and store it as ``name``."""
    torch = _torch()
    from ..modelfile import CreateSpec, create_model
    from ..pull import pull_missing

    target = parse_name(name)
    base = pull_missing(store, base_name, settings) or store.get(parse_name(base_name))
    store.gguf_path(base, "finetune")  # a folder model (ONNX, MLX) is refused here
    chats = read_chats(data)
    work = settings.home / "finetune" / f"{target.base.replace('/', '_')}-{target.tag}"
    identity = _identity(base, data, options)
    start_step = _prepare(work, identity, resume)
    folder = _exported(store, base, settings.home / "finetune" / "bases")
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads or physical_cores())
    tokenizer, model = _load(folder, options)
    dataset = build(chats, _template(store, base, folder), _tokenizer_fn(tokenizer), max_length=options.max_length,
                    held_out=options.held_out, seed=options.seed, specials=_specials(tokenizer))
    started = time.perf_counter()
    before = _held_out_loss(model, dataset.held_out, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
    per_epoch = math.ceil(len(dataset.train) / options.batch_size)
    total = per_epoch * options.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
    if start_step:
        _restore(work / "checkpoint", model, optimizer, schedule)
        log.info("resuming %s at step %d of %d", name, start_step, total)
    last = _loop(model, optimizer, schedule, dataset, tokenizer, options, work, start_step, total, progress)
    after = _held_out_loss(model, dataset.held_out, tokenizer)
    adapter = work / target.base.replace("/", "_")  # its name becomes the adapter's label
    shutil.rmtree(adapter, ignore_errors=True)
    model.save_pretrained(adapter)
    spec = CreateSpec(source=str(base.name), adapters=(str(adapter),), base_dir=Path("/"), where="finetune")
    manifest = create_model(store, target, spec, settings)
    shutil.rmtree(work / "checkpoint", ignore_errors=True)  # the run is done: nothing left to resume
    seconds = time.perf_counter() - started
    return FinetuneResult(str(target), str(base.name), total, len(dataset.train), len(dataset.held_out), before,
                          after, last, seconds, start_step, dataset.truncated, manifest)


def _identity(base: Manifest, data: Path, options: FinetuneOptions) -> dict[str, Any]:
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    settings = {k: v for k, v in asdict(options).items() if k not in ("threads", "checkpoint_every")}
    identity: dict[str, Any] = json.loads(json.dumps({"base": base.digest, "data": digest, "options": settings}))
    return identity  # as run.json holds it (tuples become lists)


def _prepare(work: Path, identity: dict[str, Any], resume: bool) -> int:
    """The step to start from: 0, or the checkpoint's when resuming the same run."""
    run_file, checkpoint = work / "run.json", work / "checkpoint"
    for stale in work.glob("checkpoint.tmp-*"):  # a checkpoint a killed run was writing
        shutil.rmtree(stale, ignore_errors=True)
    if not checkpoint.is_dir() and (work / "checkpoint.old").is_dir():  # killed between two renames
        os.replace(work / "checkpoint.old", checkpoint)
    if resume:
        if not checkpoint.is_dir() or not run_file.is_file():
            raise UsageError(f"nothing to resume in {work}; start without --resume")
        if json.loads(run_file.read_text()) != identity:
            raise UsageError("the checkpoint is of another run (base, data or options differ); "
                             "give the same ones, or start without --resume")
        return int(json.loads((checkpoint / "state.json").read_text())["step"])
    if checkpoint.is_dir():
        log.warning("starting afresh: the checkpoint in %s is replaced (--resume continues it)", work)
        shutil.rmtree(checkpoint)
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "run.json.tmp"
    tmp.write_text(json.dumps(identity, sort_keys=True))
    os.replace(tmp, run_file)
    return 0


def _exported(store: Store, base: Manifest, bases: Path) -> Path:
    """The base as a float32 Hugging Face folder, exported once per base digest (shared by every
    run on it; written beside and renamed into place, so a killed export is never used)."""
    from ..export import export_hf

    folder = bases / base.digest
    if (folder / "config.json").is_file():
        return folder
    tmp = bases / f"{base.digest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    export_hf(store, str(base.name), tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another run exported it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _load(folder: Path, options: FinetuneOptions) -> tuple[Any, Any]:
    import warnings

    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # the run has its own
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with warnings.catch_warnings():  # transformers' and peft's deprecation notes are theirs to fix
        warnings.simplefilter("ignore", FutureWarning)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = peft.LoraConfig(r=options.rank, lora_alpha=options.alpha,  # type: ignore[arg-type]  # a float works lora_dropout=options.dropout,
                             target_modules=list(options.target_modules), task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return tokenizer, peft.get_peft_model(model, config)
    except ValueError as exc:
        raise InvalidParameterError(f"target modules {', '.join(options.target_modules)}: {exc}",
                                    params="target_modules") from None


def _template(store: Store, base: Manifest, folder: Path) -> str:
    from ..formats.gguf_header import read_gguf_header

    meta = read_gguf_header(store.blob_path(base.digest), label=str(base.name)).metadata
    template = base.defaults.get("template") or meta.get("tokenizer.chat_template")
    if not template:
        raise InvalidParameterError(f"{base.name} has no chat template to render the data with; "
                                    "fine-tune an instruct model, or create one with a TEMPLATE first")
    return str(template)


def _specials(tokenizer: Any) -> tuple[str, str]:
    return tokenizer.bos_token or "", tokenizer.eos_token or ""


def _tokenizer_fn(tokenizer: Any) -> Callable[[str], tuple[list[int], list[tuple[int, int]]]]:
    def tokenize(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    return tokenize


def _batch(examples: Sequence[Example], pad: int) -> dict[str, Any]:
    import torch

    width = max(len(e.ids) for e in examples)
    ids = [list(e.ids) + [pad] * (width - len(e.ids)) for e in examples]
    labels = [list(e.labels) + [IGNORE] * (width - len(e.labels)) for e in examples]
    mask = [[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in examples]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0)


def _held_out_loss(model: Any, examples: Sequence[Example], tokenizer: Any) -> float | None:
    """Mean loss per assistant token over ``examples`` (summed exactly, batch by batch)."""
    import torch

    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            chunk = examples[i : i + 8]
            batch = _batch(chunk, _pad_id(tokenizer))
            n = sum(e.trained for e in chunk) - sum(1 for e in chunk if e.labels[0] != IGNORE)  # shifted labels
            total += float(model(**batch).loss) * max(n, 1)
            count += max(n, 1)
    return total / count


def _loop(model: Any, optimizer: Any, schedule: Any, dataset: Dataset, tokenizer: Any, options: FinetuneOptions,
          work: Path, start: int, total: int, progress: Progress | None) -> float:
    per_epoch = math.ceil(len(dataset.train) / options.batch_size)
    step, loss = start, float("nan")
    model.train()
    try:
        for epoch in range(start // per_epoch, options.epochs):
            order = list(range(len(dataset.train)))
            random.Random(options.seed * 1000 + epoch).shuffle(order)
            for k in range(step - epoch * per_epoch, per_epoch):
                chunk = [dataset.train[i] for i in order[k * options.batch_size : (k + 1) * options.batch_size]]
                out = model(**_batch(chunk, _pad_id(tokenizer)))
                out.loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step, loss = step + 1, float(out.loss.detach())
                if progress:
                    progress(step, total, loss)
                if step % options.checkpoint_every == 0 or step % per_epoch == 0:
                    _checkpoint(work, model, optimizer, schedule, step)
    except KeyboardInterrupt:
        _checkpoint(work, model, optimizer, schedule, step)
        raise AbortedError(f"stopped at step {step} of {total}; the checkpoint is kept: run the same command with "
                           "--resume to continue") from None
    return loss


def _checkpoint(work: Path, model: Any, optimizer: Any, schedule: Any, step: int) -> None:
    """Write the state into a temp folder, then rename it into place (the old one is kept until then)."""
    import torch

    tmp = work / f"checkpoint.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "training.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    current, old = work / "checkpoint", work / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    os.replace(tmp, current)
    shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint at step %d", step)


def _restore(checkpoint: Path, model: Any, optimizer: Any, schedule: Any) -> None:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
    state = torch.load(checkpoint / "training.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
