"""GGUF LoRA adapters as llama.cpp reads them (``src/llama-adapter.cpp``), checked against a base.

An adapter file has ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``
and, for each adapted weight ``W`` of the base, ``W.lora_a`` (ne: in x r) and ``W.lora_b``
(ne: r x out). llama.cpp adds ``scale * alpha / r * B (A x)`` to ``W x``. Everything llama.cpp
would refuse at load (or, worse, crash on) is refused here first, naming the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidModelFileError
from ..formats.gguf_header import GGUFHeader, TensorInfo, read_gguf_header


@dataclass(frozen=True)
class LoraFile:
    architecture: str
    alpha: float
    pairs: dict[str, tuple[TensorInfo, TensorInfo]]  # base tensor name -> (lora_a, lora_b)



def read_lora(path: Path, label: str | None = None) -> LoraFile:
    """The adapter at ``path``, its header validated; not yet checked against a base."""
    label = label or path.name
    header = read_gguf_header(path, label=label)
    meta = header.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        kind = meta.get("general.type") or "a model"
        raise InvalidModelFileError(
            f"{label} is a GGUF file but not a LoRA adapter (general.type {kind!r}, adapter.type "
            f"{meta.get('adapter.type')!r}); give a GGUF LoRA or a PEFT folder"
        )
    alpha = meta.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not -1e6 < alpha < 1e6:
        raise InvalidModelFileError(f"{label}: adapter.lora.alpha {alpha!r} is not a number")
    pairs: dict[str, list[TensorInfo | None]] = {}
    for t in header.tensors:
        if t.name.endswith(".lora_a") or t.name.endswith(".lora_b"):
            pair = pairs.setdefault(t.name[:-7], [None, None])
            pair[t.name.endswith(".lora_b")] = t
        elif not t.name.endswith("_norm.weight"):  # llama.cpp skips norm vectors, refuses the rest
            raise InvalidModelFileError(f"{label}: tensor {t.name[:80]!r} is neither a lora_a nor a lora_b")
    if not pairs:
        raise InvalidModelFileError(f"{label}: the adapter has no lora_a/lora_b tensors")
    complete: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for name, (a, b) in pairs.items():
        if a is None or b is None:
            raise InvalidModelFileError(f"{label}: {name[:80]} has a lora_{'b' if a is None else 'a'} only")
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
            raise InvalidModelFileError(
                f"{label}: {name[:80]}'s lora_a {a.shape} and lora_b {b.shape} do not make a rank-r pair"
            )
        complete[name] = (a, b)
    return LoraFile(str(meta.get("general.architecture") or "unknown"), float(alpha), complete)


def check_against(lora: LoraFile, base: GGUFHeader, label: str, base_label: str) -> None:
    """Refuse ``lora`` for ``base`` where llama.cpp would: another architecture, a weight the base
    lacks, or shapes that do not fit it."""
    arch = base.metadata.get("general.architecture")
    if lora.architecture != arch:
        raise InvalidModelFileError(
            f"{label} is an adapter for {lora.architecture[:40]} models and {base_label} is {arch}; "
            "use it with the model it was trained on"
        )
    weights = {t.name: t for t in base.tensors}
    for name, (a, b) in lora.pairs.items():
        w = weights.get(name)
        if w is None:
            raise InvalidModelFileError(
                f"{label} adapts {name[:80]}, which {base_label} does not have: the adapter is for another base model"
            )
        if name.endswith("token_embd.weight"):
            fits = w.shape[0] == b.shape[1] and w.shape[1] == a.shape[1]  # llama.cpp's flipped layout
        else:
            fits = len(w.shape) == 2 and w.shape[0] == a.shape[0] and w.shape[1] == b.shape[1]
        if not fits:
            raise InvalidModelFileError(
                f"{label}: {name[:80]} is {w.shape[0]}x{w.shape[1]} in {base_label} but the adapter's pair is for "
                f"{a.shape[0]}x{b.shape[1]}: the adapter is for another base model (shapes differ)"
            )


