"""``edgeslm convert NAME --to mlx``: a stored model into the store as an MLX folder.

The stored GGUF is exported to a Hugging Face folder (``export``, float32), then mlx-lm's
converter (``engines.mlx.tools``, in a child process with a deadline) writes float16, bfloat16
or float32 weights, or quantizes them (4 or 8 bits, or one of mlx-lm's mixed recipes); the
folder is validated as any import is (``mlx_folder``) and published with its lineage, all in one
locked temp folder of the store, so a ``kill -9`` publishes nothing.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidParameterError
from ..formats.model_format import ModelFormat, Runtime, require_installed
from ..store import ModelName, Store
from ..store.atomic import TempDir
from ..store.records import Manifest
from .variants import Built, Say, build_variant, check_source, run_tool

DTYPES = ("float16", "bfloat16", "float32")
# On Apple silicon MLX computes float16 on the GPU; the Linux CPU build emulates it, and its
# quantized matmul with float16 scales measured 50x slower than with float32 (README, MLX).
AUTO_DTYPE = "float16" if (platform.system(), platform.machine()) == ("Darwin", "arm64") else "float32"
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")  # mlx-lm's QUANT_RECIPES


@dataclass(frozen=True)
class MlxRecipe:
    dtype: str = AUTO_DTYPE
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
                                        params="q_recipe")

    @property
    def tag(self) -> str:
        """``mlx-4bit``, ``mlx-8bit-g32``, ``mlx-mixed_3_6``, ``mlx-fp16``; quantized with float32 or
        bfloat16 scales: ``mlx-4bit-fp32`` (float16, as mlx-community's models, is the default)."""
        short = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[self.dtype]
        if not (self.mixed or self.bits):
            return f"mlx-{short}"
        quant = self.mixed or f"{self.bits}bit" + ("" if self.group_size == 64 else f"-g{self.group_size}")
        return f"mlx-{quant}" + ("" if self.dtype == "float16" else f"-{short}")

    @property
    def requested(self) -> str:
        """What lineage records as asked for, and what a rebuild must match: ``mlx 4bit-fp32``."""
        return f"mlx {self.tag.removeprefix('mlx-')}"


SHORT_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def parse_recipes(text: str, dtype: str = AUTO_DTYPE) -> tuple[MlxRecipe, ...]:
    """``"4bit,8bit-g32,mixed_3_6,4bit-fp16,fp16"`` -> recipes, as their tags spell them (without
    ``mlx-``); a quantized one without a dtype suffix has ``dtype``'s scales."""
    found: list[MlxRecipe] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        head, _, suffix = part.rpartition("-")
        quant, scales = (head, SHORT_DTYPES[suffix]) if head and suffix in SHORT_DTYPES else (part, dtype)
        bits, _, group = quant.partition("bit")
        if part in SHORT_DTYPES:
            recipe = MlxRecipe(dtype=SHORT_DTYPES[part])
        elif quant in RECIPES:
            recipe = MlxRecipe(dtype=scales, mixed=quant)
        elif bits.isdigit() and group in ("", "-g32", "-g64", "-g128"):
            recipe = MlxRecipe(dtype=scales, bits=int(bits), group_size=int(group.removeprefix("-g") or 64))
        else:
            raise InvalidParameterError(
                f"MLX variant {part!r} is unknown; e.g. 4bit, 8bit, 4bit-g32, {RECIPES[2]}, fp16, bf16, fp32",
                params="mlx",
            )
        if recipe not in found:
            found.append(recipe)
    if not found:
        raise InvalidParameterError("no MLX variant given; e.g. 4bit,8bit", params="mlx")
    return tuple(found)


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
    target = target or parent.name.variant(recipe.tag)
    start = time.perf_counter()
    manifest, _ = build_variant(
        store, parent, target, ModelFormat.MLX, lambda work: _convert(work, recipe, say),
        requested=recipe.requested, file_type=f"MLX {recipe.tag.removeprefix('mlx-').upper()}",
        say=say,
    )
    return MlxConvertResult(manifest, recipe, time.perf_counter() - start)


def _convert(work: TempDir, recipe: MlxRecipe, say: Say) -> Built:
    say(f"converting with mlx-lm ({recipe.tag.removeprefix('mlx-')})")
    out = work.path / "out"
    args = [work.path / "hf", out, recipe.dtype, recipe.bits, recipe.group_size, recipe.mixed or "-"]
    details = run_tool(work, "mlx.tools", "convert", *args, what="the MLX conversion")
    (out / "README.md").unlink(missing_ok=True)  # mlx-lm's model card names a hub repo it never came from
    options = {
        "dtype": recipe.dtype,
        "q_bits": recipe.bits,
        "q_group_size": recipe.group_size,
        "q_recipe": recipe.mixed,
    }
    return Built(out, options, str(details.get("converter", "mlx-lm")))
