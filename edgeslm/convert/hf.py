"""A Hugging Face model folder, read with every problem named: config, shards, tokenizer files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputFileError, InvalidModelFileError
from ..formats.safetensors import SafetensorsFile, TensorEntry, bf16_to_f32

MAX_JSON = 64 * 2**20


@dataclass
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    shards: dict[str, SafetensorsFile]  # tensor name -> its file
    tokenizer_json: Path | None
    tokenizer_model: Path | None
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or ["(none)"]
        return str(archs[0])

    def entry(self, name: str) -> TensorEntry:
        return self.shards[name].tensors[name]

    def load(self, name: str) -> npt.NDArray[np.float32]:
        """One tensor as float32 (BF16 widened exactly, F16 exactly)."""
        e = self.entry(name)
        raw = self.shards[name].load(name)
        if e.dtype == "BF16":
            return bf16_to_f32(raw)
        if e.dtype not in ("F32", "F16", "F64"):
            raise InvalidModelFileError(f"tensor {name} is {e.dtype}; only float checkpoints convert")
        return np.asarray(raw, dtype=np.float32)

    def dominant_dtype(self) -> str:
        """The floating type most of the checkpoint's bytes are in: 'F32', 'F16' or 'BF16'."""
        totals: dict[str, int] = {}
        for name, f in self.shards.items():
            e = f.tensors[name]
            totals[e.dtype] = totals.get(e.dtype, 0) + e.end - e.start
        return max(totals, key=lambda k: totals[k]) if totals else "F32"


def read_json(path: Path, what: str) -> dict[str, Any]:
    data = _load_json(path, what)
    if not isinstance(data, dict):
        raise InvalidModelFileError(f"{path.name} is not a JSON object; it should be {what}")
    return data


def read_json_list(path: Path, what: str) -> list[Any]:
    data = _load_json(path, what)
    if not isinstance(data, list):
        raise InvalidModelFileError(f"{path.name} is not a JSON list; it should be {what}")
    return data


def _load_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > MAX_JSON:
            raise InvalidModelFileError(f"{path.name} is larger than {MAX_JSON:,} bytes; is it {what}?")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelFileError(f"{path.name} is missing from {path.parent}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelFileError(f"{path.name} is not valid JSON ({exc}); it should be {what}") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror}") from None
    return data


def open_checkpoint(folder: Path) -> Checkpoint:
    """Read ``folder``'s config, tensor tables and tokenizer files (no tensor data yet)."""
    if not folder.is_dir():
        raise InputFileError(f"{folder} is not a folder; give the folder of a Hugging Face model")
    if not (folder / "config.json").is_file():
        raise InvalidModelFileError(
            f"{folder} has no config.json: not a Hugging Face model folder (it needs config.json, "
            "*.safetensors and a tokenizer)"
        )
    config = read_json(folder / "config.json", "the model's configuration")
    if "text_config" in config and isinstance(config["text_config"], dict):  # e.g. Gemma 3 multimodal
        config = {**config, **config["text_config"]}
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        read_json(tokenizer_json, "a Hugging Face tokenizer")  # refuse a broken one before any work
    optional = {n: read_json(folder / n, n) if (folder / n).is_file() else {} for n in
                ("tokenizer_config.json", "generation_config.json")}
    return Checkpoint(
        folder, config, _shards(folder),
        tokenizer_json if tokenizer_json.is_file() else None,
        folder / "tokenizer.model" if (folder / "tokenizer.model").is_file() else None,
        optional["tokenizer_config.json"], optional["generation_config.json"],
    )


def _shards(folder: Path) -> dict[str, SafetensorsFile]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "a safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidModelFileError(f"{index.name} has no weight_map")
        files: dict[str, SafetensorsFile] = {}
        tensors: dict[str, SafetensorsFile] = {}
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str) or "/" in shard or shard.startswith("."):
                raise InvalidModelFileError(f"{index.name} names an invalid shard {str(shard)[:80]!r}")
            if shard not in files:
                if not (folder / shard).is_file():
                    raise InvalidModelFileError(f"{index.name} names the shard {shard}, which is not in {folder}")
                files[shard] = SafetensorsFile(folder / shard)
            if tensor not in files[shard].tensors:
                raise InvalidModelFileError(f"{index.name} puts {tensor} in {shard}, which does not hold it")
            tensors[tensor] = files[shard]
        return tensors
    paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise InvalidModelFileError(
            f"{folder} has no *.safetensors weights (pytorch_model.bin is not read: unpickling can run code)"
        )
    out: dict[str, SafetensorsFile] = {}
    for path in paths:
        f = SafetensorsFile(path)
        out.update({name: f for name in f.tensors})
    return out
