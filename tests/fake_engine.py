"""A deterministic engine for CLI and generation tests: bytes are tokens, replies are scripted.

Token ids 0-255 are bytes; 256 is end-of-generation. The reply is read from the model file's
``fake.reply`` key (default below) and repeated; ``fake.eog_after`` ends it early. The chat
template is the file's own, so hostile templates can be tested without llama.cpp.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgeslm.engines.base import Embedded, LoadParams, SamplingParams, register_engine
from edgeslm.errors import ContextOverflowError
from edgeslm.formats.gguf_header import read_gguf_header

EOG = 256
DEFAULT_REPLY = "The answer is 42. "
INSTANCES: list[FakeEngine] = []  # every engine opened, newest last, for tests to inspect


class FakeEngine:
    name = "fake"
    n_vocab = 257

    def __init__(self, path: Path, params: LoadParams) -> None:
        meta = read_gguf_header(path).metadata
        self.n_ctx = params.n_ctx
        vocab = meta.get("fake.n_vocab")
        self.n_vocab = vocab if isinstance(vocab, int) else 257
        self.reply = str(meta.get("fake.reply", DEFAULT_REPLY)).encode()
        eog = meta.get("fake.eog_after")
        self.eog_after = eog if isinstance(eog, int) else None
        template = meta.get("tokenizer.chat_template")
        self.template = template if isinstance(template, str) else None
        self.prompts: list[list[int]] = []
        self.closed = False
        INSTANCES.append(self)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOG else bytes([token])

    def is_end_of_generation(self, token: int) -> bool:
        return token == EOG

    def chat_template(self) -> str | None:
        return self.template

    def bos_text(self) -> str:
        return ""

    def eos_text(self) -> str:
        return ""

    def prefill(self, tokens: Sequence[int]) -> None:
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens do not fit {self.n_ctx}")
        self.prompts.append(list(tokens))

    def eval_logits(self, tokens: Sequence[int], first: int = 0, *, copy: bool = True) -> npt.NDArray[np.float32]:
        # Predicts the byte after each position as the same byte, with a margin: a simple, known model.
        rows = list(tokens)[first:]
        out = np.zeros((len(rows), self.n_vocab), dtype=np.float32)
        out[np.arange(len(rows)), rows] = 4.0
        return out

    def generate_tokens(self, prompt: Sequence[int], sampling: SamplingParams) -> Generator[int, None, None]:
        self.prefill(prompt)
        i = 0
        while True:
            if self.eog_after is not None and i >= self.eog_after:
                yield EOG
                return
            yield self.reply[i % len(self.reply)]
            i += 1

    def embed_many(self, texts: list[str], *, truncate: bool = False) -> Embedded:
        cut = [t[: self.n_ctx] if truncate else t for t in texts]
        return Embedded([self.embed(t) for t in cut], sum(len(t.encode()) for t in cut))

    def embed(self, text: str) -> list[float]:
        vec = np.bincount(np.frombuffer(text.encode(), dtype=np.uint8), minlength=256).astype(np.float64)
        return list(vec / (np.linalg.norm(vec) or 1.0))

    def close(self) -> None:
        self.closed = True


@register_engine("fake")
def open_fake(path: Path, params: LoadParams) -> FakeEngine:
    return FakeEngine(path, params)
