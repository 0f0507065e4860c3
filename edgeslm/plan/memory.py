"""What a llama.cpp runner's process will hold, predicted from the GGUF header before anything loads.

A runner's peak resident memory, part by part (each measured on a real load, ``benchmarks/memory_plan.py``):

- **weights, mapped**: the whole file. llama.cpp maps it and every page is read once (a load that
  repacks reads them, and a decode step reads every layer); they count as the process's pages.
  Loaded without a map (``--mmap off``), the tensors it repacks are read straight into their
  repacked copy: the file less those bytes is what the process holds beside the copy.
- **weights, repacked**: llama.cpp's CPU backend copies the tensors of some types into an
  interleaved layout that its kernels read faster (``CPU_REPACK``: Q4_0 and Q4_K as ``*_8x8`` on
  x86-64 with AVX2; Q4_0 and IQ4_NL on ARM), every such tensor but the token embeddings (read by
  row lookups). The copy is anonymous memory *beside* the mapped file: 597 MiB for
  Qwen2.5-Coder-1.5B's Q4_K_M here. Which types a machine repacks is a fact of the machine.
- **KV cache**: cells × layers × KV heads × (key + value length) × the cache type's bytes
  (``estimate_memory``); each slot its own cells (the runner's sequences share no unified cache).
- **compute**: the buffers a full micro-batch of prefill touches, per ``n_ubatch × (n_embd + n_ff)``.
- **vocabulary**: the tokenizer's tables in llama.cpp and in the runner, per vocabulary entry.
- **base**: the runner process before a model: Python, the libraries.

The last three are constants fitted on a machine (``MemoryConstants``); the defaults were fitted on
this project's development machine, and the device profile ``edgeslm tune`` writes replaces them.

An ONNX Runtime runner (``plan_onnx``, from the folder's config: nothing loads) holds its weight
files (a fitted share of them: onnxruntime maps external data, and a row lookup touches only the
rows it reads), each busy slot's generator with its own KV cache of the slot's whole context in
the graph's type (F32 on the CPU) and buffers per vocabulary entry, and a base; constants fitted on
28 loads of four ONNX models with every slot busy (``benchmarks/memory_plan.py``).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_ENGINE
from ..engines.base import MAX_CONTEXT, Tuning
from ..errors import InvalidParameterError, OverBudgetError
from ..formats.gguf_header import GGUFHeader, read_gguf_header
from ..formats.kv_cache import F16_CACHE, KVCache
from ..formats.model_format import Runtime
from ..formats.model_info import ModelInfo, estimate_memory, model_info
from ..store.resolve import ResolvedModel

ONNX_RUNTIME, MLX_RUNTIME = Runtime.ONNXRUNTIME.value, Runtime.MLX.value
# a plan's parts, in the order they are shown, with what each is
PARTS = (("mapped", "weights, the mapped file (onnxruntime: the resident share)"),
         ("repacked", "weights, llama.cpp's repacked copy"),
         ("kv_cache", "KV cache"), ("compute", "compute buffers"), ("vocabulary", "vocabulary tables"),
         ("base", "the runner process"))
DEFAULT_UBATCH = 512  # the runner's micro-batch (llama.cpp's default)
# the ggml types llama.cpp's CPU backend repacks, by machine (ggml-cpu's repack.cpp, this version)
REPACKED = {"x86_64": frozenset({"Q4_0", "Q4_K", "IQ4_NL"}), "aarch64": frozenset({"Q4_0", "IQ4_NL"}),
            "arm64": frozenset({"Q4_0", "IQ4_NL"})}


@dataclass(frozen=True)
class MemoryConstants:
    """A machine's share of the prediction: fitted from probe loads (``benchmarks/memory_plan.py``)."""

    # fitted by ``benchmarks/memory_plan.py --fit`` on the development machine (2-core Xeon, x86-64 Linux)
    base: int = 77_754_905  # bytes: the runner process before a model
    per_vocab: float = 133.5  # bytes per vocabulary entry
    per_activation: float = 16.33  # bytes per n_ubatch × (n_embd + n_ff)
    repacked_types: frozenset[str] = REPACKED.get(platform.machine(), frozenset())
    # ONNX Runtime (onnxruntime-genai 0.18), fitted on the same machine: 28 loads, every slot busy
    onnx_base: int = 246_091_802  # bytes: the runner, onnxruntime and its arenas
    onnx_weights: float = 0.79  # of the weight files' bytes, resident at the peak
    onnx_per_slot_vocab: float = 410.1  # bytes per busy slot per vocabulary entry (a generator's buffers)
    # MLX (its Linux CPU build, mlx-lm), fitted on SmolLM2 4- and 8-bit with prompts of 16 to 3,000 tokens
    mlx_base: int = 335_000_000  # bytes: the runner, mlx and mlx-lm
    mlx_per_score: float = 7.0  # bytes per head × query × key of one prefill step (scores, softmax)


@dataclass(frozen=True)
class MemoryPlan:
    """One configuration's predicted peak resident memory, part by part (bytes)."""

    model: str
    ctx_per_slot: int
    slots: int
    kv_type: str
    mapped: int
    repacked: int
    kv_cache: int
    compute: int
    vocabulary: int
    base: int

    @property
    def total(self) -> int:
        return self.mapped + self.repacked + self.kv_cache + self.compute + self.vocabulary + self.base

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        """One line: the parts that are not zero, and the total (MiB)."""
        short = {"mapped": "weights", "repacked": "repacked weights", "kv_cache": "KV cache", "base": "runner"}
        parts = [f"{short.get(key, key)} {getattr(self, key) / 2**20:,.0f}" for key, _ in PARTS if getattr(self, key)]
        return (f"{' + '.join(parts)} = {self.total / 2**20:,.0f} MiB ({self.slots} slot(s) × "
                f"{self.ctx_per_slot:,} tokens, KV cache {self.kv_type})")


def over_budget(plan: MemoryPlan, budget: int, whose: str, advice: str) -> OverBudgetError:
    """The error for a plan larger than ``budget`` (``whose``: what the budget is), with its parts."""
    return OverBudgetError(
        f"{plan.model} needs {plan.total / 2**20:,.0f} MiB, more than {whose} {budget / 2**20:,.0f} MiB: "
        f"{plan.describe()}; {advice} ('edgeslm plan {plan.model} --ctx {plan.ctx_per_slot} --parallel "
        f"{plan.slots} --kv-type q8_0' shows what a change saves, 'edgeslm plan --ram SIZE' chooses)"
    )


def plan_memory(path: str | Path, name: str, *, ctx_per_slot: int, slots: int = 1, kv: KVCache = F16_CACHE,
                constants: MemoryConstants | None = None, header: GGUFHeader | None = None,
                tuning: Tuning | None = None) -> MemoryPlan:
    """The runner's peak memory for ``slots`` × ``ctx_per_slot`` tokens of ``kv`` cache, from the header
    (``tuning``: its micro-batch, and the file mapped, llama.cpp's default, or read into memory)."""
    constants = constants or MemoryConstants()
    tuning = tuning or Tuning()
    n_ubatch, mmap = tuning.n_ubatch or DEFAULT_UBATCH, tuning.use_mmap is not False
    h = header or read_gguf_header(path)
    dims = _dims(h)
    info = model_info(h)
    repacked = repacked_bytes(h, constants.repacked_types)
    return MemoryPlan(
        model=name, ctx_per_slot=ctx_per_slot, slots=slots, kv_type=str(kv),
        mapped=h.file_size if mmap else h.file_size - repacked, repacked=repacked,
        kv_cache=slots * estimate_memory(info, ctx_per_slot, kv).kv_cache_bytes,  # each slot its own cells
        compute=round(constants.per_activation * min(n_ubatch, ctx_per_slot) * (dims["n_embd"] + dims["n_ff"])),
        vocabulary=round(constants.per_vocab * dims["n_vocab"]), base=constants.base,
    )


def repacked_bytes(h: GGUFHeader, types: frozenset[str]) -> int:
    """Bytes of the tensors llama.cpp's CPU backend copies into its repacked layout: those of a
    repacked type, rows in groups of 8, but the token embeddings (a row lookup reads them)."""
    return sum(t.n_bytes for t in h.tensors if t.ggml_type.name in types and t.name != "token_embd.weight"
               and len(t.shape) >= 2 and t.shape[1] % 8 == 0)


def _dims(h: GGUFHeader) -> dict[str, int]:
    meta = h.metadata
    arch = str(meta.get("general.architecture") or "")
    values = {"n_embd": meta.get(f"{arch}.embedding_length"), "n_ff": meta.get(f"{arch}.feed_forward_length")}
    dims = {k: _largest(v) for k, v in values.items()}
    dims["n_vocab"] = int(getattr(meta.get("tokenizer.ggml.tokens"), "count", 0))
    return dims


def _largest(value: Any) -> int:
    """A number, or the largest of a per-layer array (a model whose layers differ); 0 if absent."""
    items = getattr(value, "items", None)
    if items:
        return max(int(v) for v in items)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def check_available(model: ResolvedModel, *, ctx: int, kv: KVCache, constants: MemoryConstants | None,
                    available: int | None, tuning: Tuning | None = None) -> MemoryPlan:
    """A llama.cpp load of ``model`` at ``ctx`` tokens, planned and refused (``OverBudgetError``, its parts
    named) when the plan is larger than ``available`` (None: not known here, not refused)."""
    plan = plan_memory(model.path, model.name, ctx_per_slot=ctx, slots=1, kv=kv, constants=constants, tuning=tuning)
    if available is not None and plan.total + model.adapter_bytes > available:
        raise over_budget(plan, available, "this machine has available now",
                          "close other programs, or use a smaller context (--ctx), a quantized KV cache (--kv-type "
                          "q8_0) or a smaller variant")
    return plan


def plan_onnx(name: str, info: ModelInfo, *, ctx_per_slot: int, slots: int = 1,
              constants: MemoryConstants | None = None) -> MemoryPlan:
    """An ONNX Runtime runner's peak memory with ``slots`` busy generators of ``ctx_per_slot`` tokens
    (at most the trained context: the runner holds no more), from the folder's config (``info``)."""
    constants = constants or MemoryConstants()
    ctx = min(ctx_per_slot, info.context_length or ctx_per_slot)
    return MemoryPlan(
        model=name, ctx_per_slot=ctx_per_slot, slots=slots, kv_type=f"f{8 * info.kv_bytes_per_element}",
        mapped=round(constants.onnx_weights * info.file_size), repacked=0,
        kv_cache=slots * estimate_memory(info, ctx).kv_cache_bytes,
        compute=round(constants.onnx_per_slot_vocab * slots * (info.vocab_size or 0)), vocabulary=0,
        base=constants.onnx_base,
    )


MLX_PREFILL_STEP = 2048  # mlx-lm's generate_step prefills at most this many tokens at a time


def plan_mlx(name: str, info: ModelInfo, *, ctx_per_slot: int, slots: int = 1,
             constants: MemoryConstants | None = None) -> MemoryPlan:
    """An MLX runner's peak memory (mlx-lm's generation, on this machine's MLX build): its weights read
    in whole, each slot's KV cache of the whole context in the model's type (mlx-lm grows it 256
    cells at a time), one prefill step's attention scores against the whole context, and a base."""
    constants = constants or MemoryConstants()
    ctx = min(ctx_per_slot, info.context_length or ctx_per_slot)
    step = min(ctx, MLX_PREFILL_STEP)
    return MemoryPlan(
        model=name, ctx_per_slot=ctx_per_slot, slots=slots, kv_type=f"f{8 * info.kv_bytes_per_element}",
        mapped=info.file_size, repacked=0, kv_cache=slots * estimate_memory(info, ctx).kv_cache_bytes,
        compute=round(constants.mlx_per_score * (info.head_count or 1) * step * ctx), vocabulary=0,
        base=constants.mlx_base,
    )


def plan_model(model: ResolvedModel, runtime: str, *, ctx_per_slot: int, slots: int, kv: KVCache,
               constants: MemoryConstants | None = None, tuning: Tuning | None = None) -> MemoryPlan:
    """``plan_memory`` (llama.cpp), ``plan_onnx`` or ``plan_mlx`` for a resolved model, after the checks a
    load would make: a context within the trained length, a cache type the runtime and heads can hold."""
    if not 1 <= slots <= 256:
        raise InvalidParameterError(f"parallel {slots} is out of range; valid: 1 to 256", params="parallel")
    trained = model.info.context_length
    if not 16 <= ctx_per_slot <= (trained or MAX_CONTEXT):
        raise InvalidParameterError(
            f"ctx {ctx_per_slot:,} is outside what {model.name} can hold: 16 to {trained or MAX_CONTEXT:,} tokens, "
            "its trained context (edgeslm does not stretch a model's context with RoPE scaling)", params="ctx")
    folder_plan = FOLDER_PLANS.get(runtime)
    if folder_plan is not None:
        if kv != F16_CACHE:
            raise InvalidParameterError(f"--kv-type {kv}: {model.name} runs on {runtime}, which keeps its KV cache "
                                        f"in the model's own type (f{8 * model.info.kv_bytes_per_element}); "
                                        "name a GGUF model for a quantized cache", params="kv_type")
        return folder_plan(model.name, model.info, ctx_per_slot=ctx_per_slot, slots=slots, constants=constants)
    if runtime != DEFAULT_ENGINE:
        raise InvalidParameterError(f"{model.name} runs on {runtime}: its memory plan is not modelled; "
                                    "'edgeslm bench' measures its peak memory")
    info = model.info
    heads = info.embedding_length // max(info.head_count or 1, 1) if info.embedding_length else 0
    kv.check_head(info.key_length or heads, info.value_length or heads, model.name)
    return plan_memory(model.path, model.name, ctx_per_slot=ctx_per_slot, slots=slots, kv=kv, constants=constants,
                       tuning=tuning)


# the runtimes of model folders, whose plans come from the folder's config
FOLDER_PLANS = {ONNX_RUNTIME: plan_onnx, MLX_RUNTIME: plan_mlx}
