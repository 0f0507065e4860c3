"""Fill-in-the-middle prompts as llama.cpp builds them: the FIM tokens llama.cpp's vocabulary found
(from ``tokenizer.ggml.fim_*_token_id``, or by their texts: Qwen's ``<|fim_prefix|>``, CodeLlama's
``<PRE>``, …) around the code before and after the cursor.

``infill_prompt(..., repo=True)`` is llama-server's ``/infill`` prompt token for token
(``format_prompt_infill`` in ``tools/server/server-common.cpp``, the llama.cpp that llama-cpp-python
0.3.36 bundles): the repository-level pattern where the model has the tokens for it
(``[FIM_REP]myproject\\n[FIM_SEP]file\\nchunk…[FIM_SEP]filename\\n``), then
``[FIM_PRE]prefix prompt[FIM_SUF]suffix[FIM_MID]``, the prefix and suffix cut to fit a batch (3:1)
and the extra chunks to fill the context. ``repo=False`` is the plain pattern Ollama's templates
write for ``suffix`` (``<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>``).

The code is tokenized without parsing special tokens: text in a file that spells ``<|fim_middle|>``
stays text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidParameterError
from .bindings import lc

LLAMA_SERVER_BATCH = 2048  # llama-server's default n_batch, which its /infill cuts the prompt to
NULL = -1  # LLAMA_TOKEN_NULL


@dataclass(frozen=True)
class FimTokens:
    pre: int
    suf: int
    mid: int
    rep: int  # NULL where the model has none: no repository-level pattern
    sep: int
    bos: int  # NULL where the model adds none

    @classmethod
    def of(cls, vocab: Any, name: str) -> FimTokens:
        pre, suf, mid = lc.llama_vocab_fim_pre(vocab), lc.llama_vocab_fim_suf(vocab), lc.llama_vocab_fim_mid(vocab)
        missing = [k for k, t in (("prefix", pre), ("suffix", suf), ("middle", mid)) if t == NULL]
        if missing:
            raise InvalidParameterError(
                f"{name} has no fill-in-the-middle tokens ({', '.join(missing)} missing): it was not trained for "
                "code completion; use a code model such as qwen2.5-coder:0.5b", params="suffix")
        bos = lc.llama_vocab_bos(vocab) if lc.llama_vocab_get_add_bos(vocab) else NULL
        return cls(pre, suf, mid, lc.llama_vocab_fim_rep(vocab), lc.llama_vocab_fim_sep(vocab), bos)


def infill_prompt(engine: Any, fim: FimTokens, prefix: str, suffix: str, *, extra: Sequence[tuple[str, str]] = (),
                  prompt: str = "", repo: bool = True, n_ctx: int, n_predict: int = -1,
                  fit: int | None = None) -> list[int]:
    """The prompt's token ids (``engine.tokenize``); ``extra``: (filename, text) chunks of other files.
    ``fit`` (the plain pattern, truncation asked): at most so many tokens, the prefix losing its start
    first, then the suffix its end; the FIM tokens are always kept."""
    def plain(text: str) -> list[int]:
        return list(engine.tokenize(text, add_special=False, parse_special=False))

    before, after = plain(prefix), plain(suffix)
    said = list(engine.tokenize(prompt, add_special=False, parse_special=True)) if prompt else []
    if not repo:
        head = [fim.bos] if fim.bos != NULL else []
        over = len(head) + len(before) + len(said) + len(after) + 3 - fit if fit is not None else 0
        if over > 0:
            cut = min(over, len(before))
            before, after = before[cut:], after[: len(after) - min(over - cut, len(after))]
        return [*head, fim.pre, *before, *said, fim.suf, *after, fim.mid]
    context: list[int] = []
    if fim.rep != NULL:
        context += [fim.rep, *plain("myproject\n")]
    for filename, text in extra:
        if fim.sep != NULL:
            context += [fim.sep, *plain(filename + "\n")]
        else:  # llama-server's chunk separator, "\n\n--- snippet ---\n\n"
            context += plain("\n\n--- snippet ---\n\n")
        context += plain(text)
    if fim.sep != NULL:
        context += [fim.sep, *plain("filename\n")]
    batch = LLAMA_SERVER_BATCH
    before = before[len(before) - min(len(before), 3 * (batch // 4)):]
    after = after[: min(len(after), max(0, batch // 4 - (2 + len(said))))]
    take = min(max(0, n_ctx - batch - 2 * n_predict), len(context))
    head = [fim.bos] if fim.bos != NULL else []
    return [*context[len(context) - take:], *head, fim.pre, *before, *said, fim.suf, *after, fim.mid]
