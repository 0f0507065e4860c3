"""The ONNX Runtime engine, on onnxruntime-genai: an ONNX Runtime GenAI model folder (the
model builder's output: ``genai_config.json``, ``model.onnx``, external data, tokenizer).

onnxruntime-genai keeps the KV cache and runs the search (greedy, or top-k/top-p sampling
with temperature and repetition penalty); its ``logits`` output gives every prompt position's
logits for evaluation. Token ids and their bytes come from the folder's ``tokenizer.json``
(``hf_vocab``), the same file onnxruntime-genai tokenizes with.
"""

from __future__ import annotations

import json
import logging
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
NAME = Runtime.ONNXRUNTIME.value
PREFILL_CHUNK = 512  # prompt tokens per forward pass (as llama.cpp's n_ubatch): what bounds prefill memory
_og: dict[str, Any] = {}


def genai() -> Any:
    """onnxruntime_genai, imported once, its telemetry off."""
    if "module" not in _og:
        og = require("onnxruntime_genai", Runtime.ONNXRUNTIME)
        if hasattr(og, "disable_telemetry_events"):
            og.disable_telemetry_events()
        _og["module"] = og
    return _og["module"]


class OnnxRuntimeEngine(FolderVocabEngine):
    name = NAME

    def __init__(self, folder: Path, params: LoadParams) -> None:
        og = genai()
        self.params = params
        self.folder = folder
        self.config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        model_cfg = self.config["model"]
        config = og.Config(str(folder))
        threads = {"intra_op_num_threads": params.threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
        try:
            self._model = og.Model(config)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError with ORT's reason
            raise EngineError(f"onnxruntime-genai could not load {folder.name}: {exc}") from None
        super().__init__(folder, model_cfg, context=model_cfg.get("context_length"), n_ctx=params.n_ctx)
        self._generator: Any = None

    # -- evaluation and generation ------------------------------------------------------------

    def _new_generator(self, sampling: SamplingParams | None = None) -> Any:
        self._generator = None  # release the previous one's KV cache first
        self._generator = self.make_generator(sampling, max_length=self.n_ctx)
        return self._generator

    def make_generator(self, sampling: SamplingParams | None, *, max_length: int) -> Any:
        """A new onnxruntime-genai Generator (its own KV cache of ``max_length`` tokens)."""
        og = genai()
        if sampling is not None and sampling.grammar is not None:
            raise InvalidParameterError(
                "a grammar (JSON mode, a JSON schema) is not available with onnxruntime models; "
                "use a GGUF variant of the model for constrained output",
                params="grammar",
            )
        if sampling is not None and (sampling.frequency_penalty or sampling.presence_penalty):
            raise InvalidParameterError(
                "frequency_penalty and presence_penalty are not available with onnxruntime models "
                "(onnxruntime-genai has a repetition penalty only); use repeat_penalty, or a GGUF variant",
                params=("frequency_penalty", "presence_penalty"),
            )
        p = og.GeneratorParams(self._model)
        options: dict[str, Any] = {"max_length": max_length, "do_sample": False}
        if sampling is not None and not sampling.greedy:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                           top_k=sampling.top_k or self.n_vocab)
            if sampling.seed is not None:
                options["random_seed"] = sampling.seed
        if sampling is not None and sampling.repeat_penalty != 1.0:
            options["repetition_penalty"] = sampling.repeat_penalty
        p.set_search_options(**options)
        return og.Generator(self._model, p)

    def prefill(self, tokens: Sequence[int]) -> None:
        self._check_fits(tokens)
        append_chunked(self._new_generator(), tokens)

    def eval_logits(self, tokens: Sequence[int], first: int = 0, *, copy: bool = True) -> npt.NDArray[np.float32]:
        import numpy as np

        if not tokens or len(tokens) > self.n_ctx or not 0 <= first < len(tokens):
            raise ContextOverflowError(f"cannot evaluate {len(tokens):,} tokens in a context of {self.n_ctx:,}")
        generator = self._new_generator()
        generator.append_tokens(np.asarray(tokens, dtype=np.int32))
        logits = generator.get_output("logits")
        rows = np.asarray(logits, dtype=np.float32).reshape(-1, logits.shape[-1])[first:, : self.n_vocab]
        return np.array(rows) if copy else rows

    def generate_tokens(self, prompt: Sequence[int], sampling: SamplingParams) -> Generator[int, None, None]:
        self._check_fits(prompt)
        generator = self._new_generator(sampling)
        append_chunked(generator, prompt)
        n_past = len(prompt)
        while n_past < self.n_ctx:
            generator.generate_next_token()
            n_past += 1
            yield int(generator.get_next_tokens()[0])

    def embed(self, text: str | Sequence[int]) -> list[float]:
        return self.embed_many([text]).vectors[0]

    def embed_many(self, texts: Sequence[str | Sequence[int]], *, truncate: bool = False) -> Embedded:
        raise InvalidParameterError(
            "embeddings are not available from onnxruntime models (the builder's graph returns logits only); "
            "embed with a GGUF model"
        )

    def close(self) -> None:
        self._generator = None
        self._model = None


def append_chunked(generator: Any, tokens: Sequence[int], chunk: int | None = None) -> None:
    """Prefill ``tokens`` ``chunk`` at a time: the builder's graph returns logits for every position it
    is given (vocabulary × 4 bytes each: 0.6 MB a token for Qwen2.5), so a whole 2,000-token prompt
    took 1.3 GB more than 64 tokens; in chunks the peak is bounded by the chunk, as llama.cpp's
    micro-batch bounds its own, and the answer is the same (the KV cache carries the context)."""
    step = chunk or PREFILL_CHUNK
    for start in range(0, len(tokens), step):
        generator.append_tokens(list(tokens[start:start + step]))


@register_engine(NAME)
def open_onnxruntime(path: Path, params: LoadParams) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, params)
