"""The MLX engine, on mlx-lm: an MLX model folder (``mlx_lm.convert``'s output).

mlx-lm builds the model from ``config.json`` and its safetensors (quantized layers included);
generation is its ``generate_step`` with its prompt cache and samplers (temperature, top-k,
top-p, min-p; repetition penalty as a logits processor), evaluation calls the model on the
whole chunk. Token ids and their bytes come from the folder's ``tokenizer.json`` (``hf_vocab``),
the file mlx-lm's tokenizer wraps. MLX runs on Apple silicon's GPU; its Linux build runs on the
CPU, exact but slow: there it is for building and checking models for Apple devices.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ContextOverflowError, EngineError, InvalidParameterError
from ...formats.model_format import Runtime, require
from ..base import Embedded, LoadParams, SamplingParams, register_engine
from ..hf_vocab import FolderVocabEngine

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)
NAME = Runtime.MLX.value


def mlx() -> tuple[Any, Any]:
    """(mlx.core, mlx_lm), imported on first use."""
    return require("mlx.core", Runtime.MLX), require("mlx_lm", Runtime.MLX)


class MlxEngine(FolderVocabEngine):
    name = NAME

    def __init__(self, folder: Path, params: LoadParams) -> None:
        mx, _ = mlx()
        from mlx_lm.utils import load_model

        self.params = params
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        try:
            self._model, _ = load_model(folder)
        except Exception as exc:  # mlx-lm raises ValueError/KeyError with the reason
            raise EngineError(f"mlx-lm could not load {folder.name}: {type(exc).__name__}: {exc}") from None
        super().__init__(folder, config, context=config.get("max_position_embeddings"), n_ctx=params.n_ctx)
        self._mx = mx

    # -- evaluation and generation ------------------------------------------------------------

    def prefill(self, tokens: Sequence[int]) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        self._check_fits(tokens)
        cache = make_prompt_cache(self._model)
        logits = self._model(self._mx.array(list(tokens))[None], cache=cache)
        self._mx.eval(logits[:, -1, :])

    def eval_logits(self, tokens: Sequence[int], first: int = 0, *, copy: bool = True) -> npt.NDArray[np.float32]:
        import numpy as np

        if not tokens or len(tokens) > self.n_ctx or not 0 <= first < len(tokens):
            raise ContextOverflowError(f"cannot evaluate {len(tokens):,} tokens in a context of {self.n_ctx:,}")
        mx = self._mx
        logits = self._model(mx.array(list(tokens))[None])[0, first:, : self.n_vocab].astype(mx.float32)
        mx.eval(logits)
        return np.array(logits, copy=True)

    def generate_tokens(self, prompt: Sequence[int], sampling: SamplingParams) -> Generator[int, None, None]:
        from mlx_lm.generate import generate_step

        self._check_fits(prompt)
        sampler, processors = self.make_sampler(sampling)
        steps = generate_step(
            self._mx.array(list(prompt)), self._model, max_tokens=self.n_ctx - len(prompt), sampler=sampler,
            logits_processors=processors,
        )
        for token, _ in steps:
            yield int(token)

    def make_sampler(self, sampling: SamplingParams) -> tuple[Any, list[Any] | None]:
        """mlx-lm's sampler and logits processors for llama.cpp's settings (temperature 0: argmax)."""
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        if sampling.grammar is not None:
            raise InvalidParameterError(
                "a grammar (JSON mode, a JSON schema) is not available with mlx models; "
                "use a GGUF variant of the model for constrained output",
                params="grammar",
            )
        if sampling.seed is not None:
            self._mx.random.seed(sampling.seed)
        top_p = sampling.top_p if sampling.top_p < 1 else 0.0  # mlx-lm: 0 is off
        sampler = make_sampler(sampling.temperature, top_p, sampling.min_p, top_k=sampling.top_k)
        processors = None
        if sampling.penalized:
            window = sampling.repeat_last_n
            processors = make_logits_processors(
                repetition_penalty=sampling.repeat_penalty if sampling.repeat_penalty != 1.0 else None,
                repetition_context_size=window, presence_penalty=sampling.presence_penalty or None,
                presence_context_size=window, frequency_penalty=sampling.frequency_penalty or None,
                frequency_context_size=window,
            )
        return sampler, processors

    def embed_many(self, texts: Sequence[str | Sequence[int]], *, truncate: bool = False) -> Embedded:
        vectors, used = [], 0
        for text in texts:
            tokens = self.tokenize(text) if isinstance(text, str) else list(text)
            tokens = tokens[: self.n_ctx] if truncate else tokens
            vectors.append(self.embed(tokens))
            used += len(tokens)
        return Embedded(vectors, used)

    def embed(self, text: str | Sequence[int]) -> list[float]:
        """Mean-pooled, L2-normalised last hidden states (as llama.cpp's mean pooling)."""
        tokens = self.tokenize(text) if isinstance(text, str) else list(text)
        self._check_fits(tokens)
        inner = getattr(self._model, "model", None)
        if inner is None:
            raise InvalidParameterError(f"{self.folder.name}: this mlx-lm model exposes no hidden states to embed")
        hidden = inner(self._mx.array(tokens)[None])[0].astype(self._mx.float32).mean(axis=0)
        vec = [float(x) for x in hidden.tolist()]
        norm = math.sqrt(math.fsum(x * x for x in vec))
        return [x / norm for x in vec] if norm > 0 else vec

    def close(self) -> None:
        self._model = None


@register_engine(NAME)
def open_mlx(path: Path, params: LoadParams) -> MlxEngine:
    return MlxEngine(path, params)
