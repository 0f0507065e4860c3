"""An MLX model folder (mlx_lm.convert's output), read as hostile input before anything runs it.

``read_mlx_folder`` checks, without loading a weight: ``config.json`` (bounded JSON, a
``model_type`` mlx-lm has a module for), ``tokenizer.json``, every safetensors file's header
(``formats.safetensors``: offsets inside the file, known dtypes), an index naming only present
shards, and the quantization settings against the packed shapes they describe (``bits`` and
``group_size`` mlx can honour, and ``weight``/``scales`` columns that agree). Pickled weights
are never read: a folder holding only those is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ..errors import InputFileError, InvalidModelFileError
from .folder_files import FolderWeights, folder_files, folder_model_info, int_field
from .model_format import Runtime, require_installed
from .model_info import ModelInfo, TypeShare
from .safetensors import SafetensorsFile, TensorEntry

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
MAX_CONFIG_BYTES = 1 << 20
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
BITS = (2, 3, 4, 5, 6, 8)  # mlx.core.quantize's affine widths
GROUP_SIZES = (32, 64, 128)
BYTES = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class MlxFolder:
    folder: Path
    config: dict[str, Any]
    files: dict[str, int]
    info: ModelInfo


def supported_model_types() -> frozenset[str]:
    """mlx-lm's model modules (``mlx_lm/models/<type>.py``), found without importing mlx."""
    require_installed(("mlx", "mlx_lm"), Runtime.MLX)
    spec = find_spec("mlx_lm")
    assert spec is not None and spec.submodule_search_locations
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return frozenset(p.stem for p in models.glob("*.py") if not p.stem.startswith("_"))


def read_mlx_folder(folder: Path, *, label: str | None = None) -> MlxFolder:
    label = label or str(folder)
    if not folder.is_dir():
        raise InputFileError(f"{label} is not a folder; an MLX model is a folder with {CONFIG} and safetensors")
    files = {rel: path.stat().st_size for rel, path in folder_files(folder)}
    weights = sorted(rel for rel in files if rel.endswith(".safetensors"))
    if not weights:
        pickles = [rel for rel in files if rel.endswith(PICKLES)]
        what = f"pickled weights only ({', '.join(pickles[:3])})" if pickles else "no .safetensors weights"
        raise InvalidModelFileError(
            f"{label} holds {what}; edgeslm never loads pickles: convert the model to safetensors first"
        )
    config = _read_config(folder, files, label)
    if TOKENIZER not in files:
        raise InvalidModelFileError(f"{label} has no {TOKENIZER}; mlx-lm needs it beside the weights")
    tensors: dict[str, TensorEntry] = {}
    for rel in weights:
        tensors.update(SafetensorsFile(folder / rel).tensors)
    _check_index(folder, files, label)
    shares, n_params, n_bytes = _weights(tensors, config, label)
    measured = FolderWeights(shares, n_params, n_bytes, len(tensors))
    return MlxFolder(folder, config, files, _info(config, folder, files, measured))


def _read_config(folder: Path, files: dict[str, int], label: str) -> dict[str, Any]:
    if CONFIG not in files:
        raise InvalidModelFileError(f"{label} has no {CONFIG}; an MLX model folder is mlx_lm.convert's output")
    if files[CONFIG] > MAX_CONFIG_BYTES:
        raise InvalidModelFileError(f"{label}/{CONFIG} has {files[CONFIG]:,} bytes; at most 1 MiB")
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelFileError(f"{label}/{CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidModelFileError(f"{label}/{CONFIG} is not a JSON object")
    model_type = config.get("model_type")
    known = supported_model_types()
    if model_type not in known:
        raise InvalidModelFileError(
            f"{label}/{CONFIG}: model_type {str(model_type)[:40]!r} is not one mlx-lm can run; "
            f"known: {', '.join(sorted(known)[:40])}, ..."
        )
    return config


def _check_index(folder: Path, files: dict[str, int], label: str) -> None:
    index = "model.safetensors.index.json"
    if index not in files:
        return
    try:
        weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
        shards = set(weight_map.values())
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise InvalidModelFileError(f"{label}/{index} is not a safetensors index (no weight_map)") from None
    missing = sorted(str(s) for s in shards if s not in files)
    if missing:
        raise InvalidModelFileError(f"{label}/{index} names shards the folder does not have: {', '.join(missing[:3])}")


def _quantization(config: dict[str, Any], module: str) -> tuple[int, int] | None:
    """(bits, group_size) of ``module``: its own entry in the config's ``quantization``, else the default."""
    q = config.get("quantization") or config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    own = q.get(module)
    if own is False:
        return None
    spec = own if isinstance(own, dict) else q
    return spec.get("bits"), spec.get("group_size")  # type: ignore[return-value]


def _weights(
    tensors: dict[str, TensorEntry], config: dict[str, Any], label: str
) -> tuple[tuple[TypeShare, ...], int, int]:
    """(type mix, logical parameters, bytes). A quantized layer's ``weight`` packs ``32 / bits``
    values per uint32 and must agree with its ``scales``: columns x 32 / bits = groups x group size."""
    shares: dict[str, list[int]] = {}
    overhead = {n for n in tensors if n.endswith((".scales", ".biases")) and n.rsplit(".", 1)[0] + ".weight" in tensors}
    for name, t in tensors.items():
        size = t.end - t.start
        params, kind = (0, "scales") if name in overhead else (math.prod(t.shape), t.dtype)
        module = name.rsplit(".", 1)[0]
        if t.dtype == "U32" and f"{module}.scales" in tensors:
            params, kind = _packed(module, t, tensors[f"{module}.scales"], config, label)
        entry = shares.setdefault(kind, [0, 0, 0])
        entry[0] += params
        entry[1] += size
        entry[2] += 1
    if "scales" in shares:  # group scales and biases: bytes of the quantized types, no parameters
        extra = shares.pop("scales")
        quantized = [k for k in shares if k.startswith("Q")]
        if quantized:
            shares[quantized[0]][1] += extra[1]
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1][0], kv[0]))
    n_params = sum(v[0] for v in shares.values())
    return tuple(TypeShare(k, *v) for k, v in ordered), n_params, sum(t.end - t.start for t in tensors.values())


def _packed(
    module: str, weight: TensorEntry, scales: TensorEntry, config: dict[str, Any], label: str
) -> tuple[int, str]:
    q = _quantization(config, module)
    if q is None:
        raise InvalidModelFileError(f"{label}: {module} is packed (uint32) but config.json has no quantization for it")
    bits, group = q
    if bits not in BITS or group not in GROUP_SIZES:
        raise InvalidModelFileError(
            f"{label}: {module} asks for {bits}-bit groups of {group}; mlx quantizes {BITS} bits in groups of "
            f"{GROUP_SIZES}"
        )
    rows = weight.shape[-1] * 32 // bits
    if weight.shape[-1] * 32 % bits or rows != scales.shape[-1] * group or rows % group:
        raise InvalidModelFileError(
            f"{label}: {module} holds {weight.shape[-1]} uint32 columns ({weight.shape[-1] * 32 / bits:g} values at "
            f"{bits} bits) but {scales.shape[-1]} groups of {group} ({scales.shape[-1] * group}); the quantization "
            "settings do not describe these weights"
        )
    return math.prod(weight.shape[:-1]) * rows, f"Q{bits}G{group}"


def _info(config: dict[str, Any], folder: Path, files: dict[str, int], weights: FolderWeights) -> ModelInfo:
    heads, hidden = int_field(config, "num_attention_heads"), int_field(config, "hidden_size")
    floats = [s.ggml_type for s in weights.type_mix if s.ggml_type in BYTES]
    return folder_model_info(
        folder, files, weights, architecture=str(config.get("model_type")),
        context_length=int_field(config, "max_position_embeddings"), embedding_length=hidden,
        block_count=int_field(config, "num_hidden_layers"), head_count=heads,
        head_count_kv=int_field(config, "num_key_value_heads"),
        head_dim=int_field(config, "head_dim") or (hidden // heads if hidden and heads else None),
        sliding_window=int_field(config, "sliding_window"), vocab_size=int_field(config, "vocab_size"),
        kv_bytes_per_element=BYTES.get(floats[0], 2) if floats else 2,  # the cache takes the activations' type
    )
