"""``edgeslm convert NAME --to mlx``: a stored model into the store as an MLX folder.

The stored GGUF is exported to a Hugging Face folder (``export``, float32), then mlx-lm's
converter (``engines.mlx_tools``, in a child process with a deadline) writes float16, bfloat16
or float32 weights, or quantizes them (4 or 8 bits, or one of mlx-lm's mixed recipes); the
folder is validated as any import is (``mlx_folder``) and published with its lineage, all in one
locked temp folder of the store, so a ``kill -9`` publishes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import InvalidParameterError
from ..formats.model_format import ModelFormat, Runtime, require_installed
from ..store import ModelName, Store
from ..store.atomic import TempDir
from ..store.registry import Manifest
from .variants import Built, Say, build_variant, check_source, run_tool

DTYPES = ("float16", "bfloat16", "float32")
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")  # mlx-lm's QUANT_RECIPES


@dataclass(frozen=True)
class MlxRecipe:
    dtype: str = "float16"
    bits: int = 0  # 0: not quantized
    group_size: int = 64
    mixed: str | None = None  # one of mlx-lm's mixed recipes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidParameterError(f"dtype {self.dtype!r} is unknown; valid: {', '.join(DTYPES)}", params="dtype")
        if self.bits and self.bits not in BITS:
            raise InvalidParameterError(f"q_bits {self.bits} is not one mlx quantizes; valid: {BITS}", params="q_bits")
        if self.group_size not in GROUP_SIZES:
            raise InvalidParameterError(
                f"q_group_size {self.group_size} is not one mlx quantizes; valid: {GROUP_SIZES}", params="q_group_size"
            )
        if self.mixed is not None and self.mixed not in RECIPES:
            raise InvalidParameterError(f"q_recipe {self.mixed!r} is unknown; valid: {', '.join(RECIPES)}",
                                        params="q_recipe")  # fmt: skip

    @property
    def tag(self) -> str:
        """``mlx-4bit``, ``mlx-8bit-g32``, ``mlx-mixed_3_6``, ``mlx-fp16``."""
        if self.mixed:
            return f"mlx-{self.mixed}"
        if self.bits:
            return f"mlx-{self.bits}bit" + ("" if self.group_size == 64 else f"-g{self.group_size}")
        return {"float16": "mlx-fp16", "bfloat16": "mlx-bf16", "float32": "mlx-fp32"}[self.dtype]


@dataclass(frozen=True)
class MlxConvertResult:
    manifest: Manifest
    recipe: MlxRecipe
    seconds: float


def convert_to_mlx(
    store: Store,
    name: ModelName,
    recipe: MlxRecipe,
    *,
    target: ModelName | None = None,
    progress: Callable[[str], None] | None = None,
) -> MlxConvertResult:
    say = progress or (lambda message: None)
    parent = store.get(name)
    check_source(parent, "mlx")
    require_installed(("mlx", "mlx_lm", "transformers"), Runtime.MLX)
    target = target or replace(parent.name, tag=recipe.tag)
    start = time.perf_counter()
    manifest, _ = build_variant(
        store, parent, target, ModelFormat.MLX, lambda work: _convert(work, recipe, say),
        requested=f"mlx {recipe.tag.removeprefix('mlx-')}", file_type=f"MLX {recipe.tag.removeprefix('mlx-').upper()}",
        say=say,
    )  # fmt: skip
    return MlxConvertResult(manifest, recipe, time.perf_counter() - start)


def _convert(work: TempDir, recipe: MlxRecipe, say: Say) -> Built:
    say(f"converting with mlx-lm ({recipe.tag.removeprefix('mlx-')})")
    out = work.path / "out"
    args = [work.path / "hf", out, recipe.dtype, recipe.bits, recipe.group_size, recipe.mixed or "-"]
    details = run_tool(work, "mlx_tools", "convert", *args, what="the MLX conversion")
    (out / "README.md").unlink(missing_ok=True)  # mlx-lm's model card names a hub repo it never came from
    options = {
        "dtype": recipe.dtype,
        "q_bits": recipe.bits,
        "q_group_size": recipe.group_size,
        "q_recipe": recipe.mixed,
    }
    return Built(out, options, str(details.get("converter", "mlx-lm")))
