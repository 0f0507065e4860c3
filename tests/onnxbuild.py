"""Tiny ONNX Runtime GenAI models built here: a random Llama (``hfbuild``) converted to GGUF by
edgeslm, then built by onnxruntime-genai's model builder through ``convert --to onnx``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeslm.convert import convert
from edgeslm.convert.to_onnx import Method, Precision, convert_to_onnx
from edgeslm.store import Store, parse_name
from tests.hfbuild import write_model, write_tokenizer

GGUF_NAME = "tiny-llama:f32"


def build_store(root: Path, *variants: tuple[Precision, Method]) -> Store:
    """A store holding the tiny Llama as f32 GGUF and each ONNX variant asked for."""
    store = Store.open(root / "models")
    folder = root / "hf"
    vocab = write_tokenizer(folder)
    write_model(folder, "llama", vocab)
    convert(store, folder, outtype="f32", name=GGUF_NAME)
    for precision, method in variants:
        convert_to_onnx(store, parse_name(GGUF_NAME), precision=precision, method=method)
    return store


def private_home(built: Path, home: Path) -> Path:
    """A test's own copy of a home built once per session (its store may be changed freely)."""
    shutil.copytree(built / "models", home / "models")
    return home


def copy_folder(store: Store, name: str, dest: Path) -> Path:
    """A private, writable copy of a stored ONNX model's folder (to damage in a test)."""
    shutil.copytree(store.model_path(store.get(parse_name(name))), dest)
    for path in dest.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return dest


def edit_json(path: Path, change: dict[str, object]) -> None:
    data = json.loads(path.read_text())
    node = data
    *parents, last = list(change)[0].split(".")
    for key in parents:
        node = node[key]
    node[last] = list(change.values())[0]
    path.write_text(json.dumps(data))
