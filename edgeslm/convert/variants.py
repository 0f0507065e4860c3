"""What every folder-format build shares (``to_onnx``, ``to_mlx``): the source check, one locked
temp folder of the store for all its steps, the export to Hugging Face form, tools run as child
processes with a deadline, the folder check an import gets, and publishing with lineage.

A ``kill -9`` at any point leaves only the temp folder (a child holds its lock too, through
``pass_fds``), which the next store sweep removes: nothing is published.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError, InvalidParameterError
from ..formats.folder_checks import check_folder
from ..formats.model_format import ModelFormat
from ..formats.size_class import classify
from ..framing import run_child
from ..store import ModelName, Store
from ..store.atomic import TempDir
from ..store.folders import publish_folder
from ..store.records import Manifest

BUILD_TIMEOUT = 3600.0  # seconds per step: a 14B model's build on a slow machine takes minutes
SUPPORTED = ("llama", "qwen2", "qwen3")  # the architectures ``export`` writes, which both converters build
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
Say = Callable[[str], None]


@dataclass(frozen=True)
class Built:
    folder: Path  # inside the work folder: moved into the store, never copied
    options: dict[str, Any]  # for the lineage
    made_with: str  # the tool and its version


def check_source(parent: Manifest, to: str) -> None:
    """A stored GGUF model of an architecture ``export`` writes, or a clear refusal."""
    if parent.format is not ModelFormat.GGUF:
        raise InvalidParameterError(
            f"{parent.name} is already an {parent.format.value} model; convert its GGUF source instead"
        )
    if parent.info.architecture not in SUPPORTED:
        raise InvalidModelFileError(
            f"{parent.name} is a {parent.info.architecture} model; convert --to {to} supports "
            f"{', '.join(SUPPORTED)} (the architectures edgeslm exports to Hugging Face form for the converter)"
        )


def stored_build(store: Store, name: ModelName, parent: Manifest, requested: str) -> Manifest | None:
    """``name`` as stored, if it was built from ``parent``'s bytes as ``requested``; else None (build it)."""
    found = store.find(name)
    if found is None or (found.source.get("parent"), found.source.get("requested")) != (parent.digest, requested):
        return None
    return found


def run_tool(work: TempDir, module: str, step: str, *args: object, what: str) -> dict[str, Any]:
    """One step of ``edgeslm.engines.<module>`` in a child process, offline, holding ``work``'s lock."""
    argv = [sys.executable, "-m", f"edgeslm.engines.{module}", step, *map(str, args)]
    return run_child(argv, timeout=BUILD_TIMEOUT, what=what, pass_fds=(work.fd,), env=OFFLINE)


def build_variant(
    store: Store, parent: Manifest, target: ModelName, fmt: ModelFormat, build: Callable[[TempDir], Built], *,
    requested: str, file_type: str, say: Say,
) -> tuple[Manifest, Built]:
    """Export ``parent``, let ``build`` make the folder from ``work/hf``, check it and store it as ``target``."""
    from ..export import export_hf

    with store.locked():
        work = TempDir(store.tmp_dir, fmt.value)
    with work:
        say(f"exporting {parent.name} to a Hugging Face folder (float32)")
        export_hf(store, str(parent.name), work.path / "hf")
        built = build(work)
        info = check_folder(fmt, built.folder, label=f"the {requested} build")
        n_params = parent.info.n_params  # the source's count: a packed or untied graph counts otherwise
        size = classify(n_params)
        bpw = round(8 * info.tensor_bytes / max(n_params, 1), 4)
        info = replace(info, n_params=n_params, size_class=size.size_class, size_class_label=size.label,
                       file_type=file_type, bits_per_weight=bpw)
        say(f"storing {target}")
        manifest = publish_folder(store, target, built.folder, fmt=fmt, info=info,
                                  source=_lineage(parent, requested, built))
    return manifest, built


def _lineage(parent: Manifest, requested: str, built: Built) -> dict[str, str]:
    return {
        "kind": "convert",
        "parent": parent.digest,
        "parent_name": str(parent.name),
        "parent_type": parent.info.file_type or str(parent.info.main_type),
        "requested": requested,
        "options": json.dumps(built.options, sort_keys=True),
        "made_with": built.made_with,
    }
