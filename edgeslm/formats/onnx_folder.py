"""An ONNX Runtime GenAI model folder, read as hostile input before anything runs it.

``read_onnx_folder`` checks, without loading a weight: ``genai_config.json`` (bounded JSON,
every file it names a plain file inside the folder), ``tokenizer.json``, the graph (protobuf
that parses into an ONNX model), every initializer's shape (no 2^40-element declarations)
and external data (a file inside the folder, long enough for the bytes declared), and every
operator domain (one onnxruntime knows). It returns what ``list`` and ``show`` print.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputFileError, InvalidModelFileError
from .folder_files import FolderWeights, folder_files, folder_model_info, int_field, safe_relative_path
from .model_format import Runtime, require
from .model_info import ModelInfo, TypeShare

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)
GENAI_CONFIG = "genai_config.json"
TOKENIZER = "tokenizer.json"
MAX_CONFIG_BYTES = 1 << 20
MAX_GRAPH_BYTES = 2**31 - 1  # protobuf's limit; weights past it live in external data
MAX_ELEMENTS = 1 << 36  # per tensor: 64 G elements is past any model edgeslm targets
# the operator domains onnxruntime's CPU build has kernels for (its contrib ops included) and the
# ONNX standard's own; a test checks the table against onnxruntime's kernel registry
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                           "ai.onnx.preview.training", "ai.onnx.training"})
NON_PARAMETERS = ("cos_cache", "sin_cache")  # rotary tables the builder stores as initializers
# onnx.TensorProto.DataType -> (name in the type mix, bits per element)
DTYPES: dict[int, tuple[str, float]] = {
    1: ("F32", 32), 2: ("U8", 8), 3: ("I8", 8), 4: ("U16", 16), 5: ("I16", 16), 6: ("I32", 32), 7: ("I64", 64),
    9: ("BOOL", 8), 10: ("F16", 16), 11: ("F64", 64), 12: ("U32", 32), 13: ("U64", 64), 16: ("BF16", 16),
    21: ("U4", 4), 22: ("I4", 4),
}


@dataclass(frozen=True)
class OnnxFolder:
    folder: Path
    config: dict[str, Any]  # genai_config.json
    model_file: str  # the decoder graph, relative to the folder
    files: dict[str, int]  # relative path -> bytes
    info: ModelInfo


def read_onnx_folder(folder: Path, *, label: str | None = None) -> OnnxFolder:
    label = label or str(folder)
    if not folder.is_dir():
        raise InputFileError(f"{label} is not a folder; an ONNX model is a folder with {GENAI_CONFIG} and its files")
    files = {rel: path.stat().st_size for rel, path in folder_files(folder)}
    config = _read_config(folder, files, label)
    if TOKENIZER not in files:
        raise InvalidModelFileError(f"{label} has no {TOKENIZER}; ONNX Runtime GenAI needs it next to the graph")
    model_file = config["model"]["decoder"]["filename"]
    graph = _read_graph(folder / model_file, f"{label}/{model_file}")
    _check_domains(graph, f"{label}/{model_file}")
    shares, n_params, n_bytes, n_tensors = _weights(graph, folder, files, f"{label}/{model_file}")
    weights = FolderWeights(shares, n_params, n_bytes, n_tensors)
    info = _info(config, folder, files, weights, _kv_bytes(graph))
    return OnnxFolder(folder, config, model_file, files, info)


def _read_config(folder: Path, files: dict[str, int], label: str) -> dict[str, Any]:
    if GENAI_CONFIG not in files:
        raise InvalidModelFileError(
            f"{label} has no {GENAI_CONFIG}, so it is not an ONNX Runtime GenAI model folder; build one with "
            "'edgeslm convert NAME --to onnx' (or onnxruntime_genai.models.builder)"
        )
    if files[GENAI_CONFIG] > MAX_CONFIG_BYTES:
        raise InvalidModelFileError(f"{label}/{GENAI_CONFIG} has {files[GENAI_CONFIG]:,} bytes; at most 1 MiB")
    try:
        config = json.loads((folder / GENAI_CONFIG).read_text(encoding="utf-8"))
        filename = config["model"]["decoder"]["filename"]
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelFileError(f"{label}/{GENAI_CONFIG} is not valid JSON ({exc})") from None
    except (KeyError, TypeError):
        raise InvalidModelFileError(f"{label}/{GENAI_CONFIG} names no model.decoder.filename") from None
    for where, value in _named_files(config):
        if safe_relative_path(value) is None:
            raise InvalidModelFileError(
                f"{label}/{GENAI_CONFIG} names {value!r} as {where}: a path outside the folder; "
                "every file it names must be a plain name inside the model folder"
            )
        if value not in files:
            raise InvalidModelFileError(
                f"{label}/{GENAI_CONFIG} names {value!r} as {where}, but the folder has no such file"
            )
    if not str(filename).endswith(".onnx"):
        raise InvalidModelFileError(f"{label}/{GENAI_CONFIG}: model.decoder.filename {filename!r} is not an .onnx file")
    return dict(config)


def _named_files(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every value in the config that names a file (keys 'filename', '*_file', '*_path')."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if isinstance(value, (dict, list)):
                yield from _named_files(value, here)
            elif str(key) == "filename" or str(key).endswith(("_file", "_filename", "_path")):
                yield here, value
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _named_files(item, f"{where}[{i}]")


def _read_graph(path: Path, label: str) -> onnx.ModelProto:
    onnx = require("onnx", Runtime.ONNXRUNTIME)
    size = path.stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise InvalidModelFileError(f"{label} has {size:,} bytes; an ONNX graph is at most 2 GiB (weights go outside)")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise InvalidModelFileError(f"{label} is not an ONNX model: protobuf could not parse it ({exc})") from None
    if not model.ir_version or not model.graph.node:
        raise InvalidModelFileError(f"{label} is not an ONNX model: it parses, but has no IR version or no graph")
    return model  # type: ignore[no-any-return]


def _check_domains(model: onnx.ModelProto, label: str) -> None:
    known = KNOWN_DOMAINS | {f.domain for f in model.functions}
    for node in model.graph.node:
        if node.domain not in known:
            raise InvalidModelFileError(
                f"{label}: node {node.name or node.op_type!r} is a {node.op_type} of operator domain "
                f"{node.domain!r}, which onnxruntime does not know (a custom op needs its library); "
                f"known domains: {', '.join(sorted(d or 'ai.onnx' for d in known))}"
            )


def _weights(
    model: onnx.ModelProto, folder: Path, files: dict[str, int], label: str
) -> tuple[tuple[TypeShare, ...], int, int, int]:
    """(type mix, logical parameters, weight bytes, tensors). A block-quantized MatMul counts
    its K x N logical weights at its bit width; its scales and zero points count as bytes only."""
    logical: dict[str, tuple[int, str]] = {}  # initializer -> (parameters, type name)
    overhead: set[str] = set()
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            logical[node.input[1]] = (attrs.get("K", 0) * attrs.get("N", 0), f"INT{attrs.get('bits', 4)}")
            overhead.update(node.input[2:])
        elif node.op_type == "GatherBlockQuantized" and node.input:
            overhead.update(node.input[2:])
            logical[node.input[0]] = (-attrs.get("bits", 4), f"INT{attrs.get('bits', 4)}")
    shares: dict[str, list[int]] = {}
    n_params = n_bytes = 0
    for t in model.graph.initializer:
        elements = _elements(t, label)
        name, bits = DTYPES.get(t.data_type, (f"type{t.data_type}", 8))
        size = math.ceil(elements * bits / 8)
        _check_data(t, size, folder, files, label)
        params = 0 if t.name in overhead or t.name in NON_PARAMETERS else elements
        if t.name in logical:
            params, name = logical[t.name]
            params = elements * 8 // -params if params < 0 else params  # packed bytes -> values
        entry = shares.setdefault(name, [0, 0, 0])
        entry[0] += params
        entry[1] += size
        entry[2] += 1
        n_params += params
        n_bytes += size
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return tuple(TypeShare(k, *v) for k, v in ordered), n_params, n_bytes, len(model.graph.initializer)


def _elements(t: onnx.TensorProto, label: str) -> int:
    if any(d < 0 for d in t.dims):
        raise InvalidModelFileError(f"{label}: initializer {t.name!r} has a negative dimension {list(t.dims)}")
    elements = int(math.prod(t.dims))
    if elements > MAX_ELEMENTS:
        raise InvalidModelFileError(
            f"{label}: initializer {t.name!r} declares shape {list(t.dims)}, {elements:,} elements "
            f"(more than 2^36); a corrupt or hostile graph"
        )
    return elements


def _check_data(t: onnx.TensorProto, size: int, folder: Path, files: dict[str, int], label: str) -> None:
    if t.data_location != 1:  # EXTERNAL
        return
    entries = {e.key: e.value for e in t.external_data}
    location = entries.get("location", "")
    if safe_relative_path(location) is None or location not in files:
        raise InvalidModelFileError(
            f"{label}: initializer {t.name!r} keeps its data in {location!r}, which is not a file inside the folder"
        )
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", size))
    except ValueError:
        raise InvalidModelFileError(f"{label}: initializer {t.name!r} has a malformed offset or length") from None
    if length != size:
        raise InvalidModelFileError(
            f"{label}: initializer {t.name!r} declares {length:,} bytes of data, but its shape needs {size:,}"
        )
    if offset < 0 or offset + length > files[location]:
        raise InvalidModelFileError(
            f"{label}: initializer {t.name!r} ends at byte {offset + length:,} of {location}, which has "
            f"{files[location]:,} bytes (truncated download or copy?)"
        )


def _info(config: dict[str, Any], folder: Path, files: dict[str, int], weights: FolderWeights, kv: int) -> ModelInfo:
    model, decoder = config.get("model", {}), config["model"]["decoder"]
    return folder_model_info(
        folder, files, weights, architecture=str(model.get("type") or "unknown"),
        context_length=int_field(model, "context_length"), embedding_length=int_field(decoder, "hidden_size"),
        block_count=int_field(decoder, "num_hidden_layers"), head_count=int_field(decoder, "num_attention_heads"),
        head_count_kv=int_field(decoder, "num_key_value_heads"), head_dim=int_field(decoder, "head_size"),
        sliding_window=int_field(decoder, "sliding_window"), vocab_size=int_field(model, "vocab_size"),
        kv_bytes_per_element=kv,
    )


def _kv_bytes(model: onnx.ModelProto) -> int:
    """Bytes per element of the KV cache: the type of the graph's first past-key input (F32 on the CPU)."""
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            _, bits = DTYPES.get(value.type.tensor_type.elem_type, ("", 16))
            return max(int(bits) // 8, 1)
    return 2
