"""A PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``) into a GGUF LoRA
for one base model, as llama.cpp's ``convert_lora_to_gguf.py`` writes it.

Each ``…lora_A.weight`` / ``…lora_B.weight`` pair goes to the base weight's GGUF name with
``.lora_a`` / ``.lora_b`` (PEFT's (r, in) and (out, r) are already llama.cpp's layout). Where the
model converter permutes Llama's Q and K rows to llama.cpp's rotary layout, B's rows are permuted
the same way (B A's rows are B's rows). llama.cpp scales a pair by ``alpha / r``; PEFT by
``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA, per-module with ``alpha_pattern``), so where the
two differ B is multiplied by their ratio and the file keeps ``lora_alpha``. The weights stay F32:
an adapter is small and this keeps it exact.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from ..convert.arch import ARCHS, to_rope_pairs
from ..errors import InputFileError, InvalidModelFileError
from ..formats.gguf_header import GGUFHeader
from ..formats.safetensors import SafetensorsFile, bf16_to_f32

log = logging.getLogger(__name__)
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
MAX_CONFIG = 1 << 20
_PAIR = re.compile(r"(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[A-Za-z0-9_]+)?\.weight")
_PREFIX = "base_model.model."


@dataclass(frozen=True)
class PeftConfig:
    rank: int
    alpha: float
    rslora: bool
    alpha_pattern: dict[str, float]
    rank_pattern: dict[str, int]
    base_model: str

    def scale(self, module: str, rank: int) -> float:
        """PEFT's scaling of one module (``peft/tuners/lora/layer.py``)."""
        alpha = float(_pattern_value(self.alpha_pattern, module, self.alpha))
        return alpha / (math.sqrt(rank) if self.rslora else rank)


def is_peft_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def read_peft_config(folder: Path) -> PeftConfig:
    """``adapter_config.json``, refused unless it is a plain LoRA llama.cpp can apply."""
    path = folder / CONFIG
    try:
        if path.stat().st_size > MAX_CONFIG:
            raise InvalidModelFileError(f"{path} is larger than {MAX_CONFIG:,} bytes; not a PEFT config")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelFileError(f"{path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidModelFileError(f"{path} is not a JSON object")
    kind = str(data.get("peft_type", "")).upper()
    if kind != "LORA":
        raise InvalidModelFileError(
            f"{path}: peft_type is {str(data.get('peft_type'))[:40]!r}; "
            "only LoRA adapters convert to llama.cpp's format"
        )
    unsupported = [
        (bool(data.get("use_dora")), "DoRA (use_dora)"),
        (data.get("bias", "none") != "none", f"trained biases (bias={data.get('bias')!r})"),
        (bool(data.get("fan_in_fan_out")), "fan_in_fan_out (GPT-2 style Conv1D layers)"),
        (bool(data.get("modules_to_save")), f"fully trained modules ({data.get('modules_to_save')!r:.60})"),
        (bool(data.get("use_qalora")), "QALoRA"),
    ]
    for bad, what in unsupported:
        if bad:
            raise InvalidModelFileError(f"{path}: {what} has no place in a llama.cpp LoRA; train a plain LoRA")
    rank, alpha = data.get("r"), data.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidModelFileError(f"{path}: r must be a positive integer, not {rank!r:.40}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise InvalidModelFileError(f"{path}: lora_alpha must be a number, not {alpha!r:.40}")
    patterns = {k: data.get(k) or {} for k in ("alpha_pattern", "rank_pattern")}
    for key, table in patterns.items():
        if not isinstance(table, dict) or not all(isinstance(v, (int, float)) for v in table.values()):
            raise InvalidModelFileError(f"{path}: {key} must map module patterns to numbers")
    return PeftConfig(rank, float(alpha), bool(data.get("use_rslora")), dict(patterns["alpha_pattern"]),
                      dict(patterns["rank_pattern"]), str(data.get("base_model_name_or_path") or ""))


def _pattern_value(table: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern that matches the module name's end."""
    for key, value in table.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            raise InvalidModelFileError(f"adapter_config.json: {key[:40]!r} is not a regular expression") from None
    return default


def peft_to_gguf(folder: Path, base: GGUFHeader, out: Path, *, base_label: str) -> int:
    """Write the GGUF LoRA of the PEFT adapter in ``folder`` for ``base`` to ``out``; the number
    of adapted weights. Shapes are checked against the base before anything is written."""
    config = read_peft_config(folder)
    weights_path = folder / WEIGHTS
    if not weights_path.is_file():
        bin_file = folder / "adapter_model.bin"
        pickle = " (adapter_model.bin is a pickle and is not opened: save the adapter with safetensors)"
        hint = pickle if bin_file.exists() else ""
        raise InputFileError(f"{folder} has no {WEIGHTS}{hint}")
    st = SafetensorsFile(weights_path)
    arch_name = str(base.metadata.get("general.architecture"))
    arch = next((a for a in ARCHS.values() if gguf.MODEL_ARCH_NAMES[a.gguf] == arch_name), None)
    if arch is None:
        known = ", ".join(sorted(gguf.MODEL_ARCH_NAMES[a.gguf] for a in ARCHS.values()))
        raise InvalidModelFileError(f"{base_label} is a {arch_name[:40]} model; adapters convert for {known}")
    meta = base.metadata
    n_layer = int(meta.get(f"{arch_name}.block_count") or 0)  # type: ignore[arg-type]
    n_head = int(meta.get(f"{arch_name}.attention.head_count") or 0)  # type: ignore[arg-type]
    n_head_kv = int(meta.get(f"{arch_name}.attention.head_count_kv") or n_head)  # type: ignore[arg-type]
    names = gguf.get_tensor_name_map(arch.gguf, n_layer)
    shapes = {t.name: t.shape for t in base.tensors}
    pairs = _pairs(st, weights_path.name)
    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, config.alpha)
    for module, (a_name, b_name) in sorted(pairs.items()):
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None or target not in shapes:
            what = "is tied to the embedding in" if target == "output.weight" else "has no place in"
            raise InvalidModelFileError(f"{weights_path.name}: {module[:80]} {what} {base_label} ({arch_name})")
        a, b = _load(st, a_name), _load(st, b_name)
        ne = shapes[target]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (a.shape[1], b.shape[0]) != (ne[0], ne[1]):
            raise InvalidModelFileError(
                f"{weights_path.name}: {module[:80]}'s pair is {b.shape[0]}x{a.shape[1]} (rank {a.shape[0]}) but "
                f"{base_label}'s {target} is {ne[1]}x{ne[0]}: the adapter is for another base model (shapes differ)"
            )
        rank = a.shape[0]
        ours = config.alpha / rank if config.alpha else 1.0
        b = b * np.float32(config.scale(module, rank) / ours) if config.scale(module, rank) != ours else b
        if arch.permute_qk and target.endswith("attn_q.weight"):
            b = to_rope_pairs(b, n_head)
        elif arch.permute_qk and target.endswith("attn_k.weight"):
            b = to_rope_pairs(b, n_head_kv)
        writer.add_tensor(target + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(target + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("converted %s: %d adapted weights, rank %s, alpha %g", folder, len(pairs), config.rank, config.alpha)
    return len(pairs)


def _pairs(st: SafetensorsFile, where: str) -> dict[str, tuple[str, str]]:
    """Module name (without PEFT's prefix) -> (its lora_A, its lora_B) tensor names."""
    found: dict[str, dict[str, str]] = {}
    for name in st.tensors:
        if "lora_embedding_" in name:
            raise InvalidModelFileError(f"{where}: {name[:80]} adapts the token embeddings; "
                                        "only linear layers convert (train without embedding targets)")
        match = _PAIR.fullmatch(name)
        if match is None:
            raise InvalidModelFileError(
                f"{where}: tensor {name[:80]!r} is not a LoRA A or B weight (a fully trained module or a bias): "
                "only plain LoRA adapters convert"
            )
        module = match["module"].removeprefix(_PREFIX)
        found.setdefault(module, {})[match["which"]] = name
    if not found:
        raise InvalidModelFileError(f"{where} holds no LoRA weights")
    for module, pair in found.items():
        if len(pair) != 2:
            raise InvalidModelFileError(f"{where}: {module[:80]} has a lora_{'B' if 'A' in pair else 'A'} missing")
    return {m: (p["A"], p["B"]) for m, p in found.items()}


def _load(st: SafetensorsFile, name: str) -> npt.NDArray[np.float32]:
    entry = st.tensors[name]
    raw = st.load(name)
    if entry.dtype == "BF16":
        return bf16_to_f32(raw)
    if entry.dtype not in ("F32", "F16", "F64"):
        raise InvalidModelFileError(f"{name[:80]} is {entry.dtype}; LoRA weights must be floating point")
    array = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidModelFileError(f"{name[:80]} holds NaN or infinite values")
    return array
