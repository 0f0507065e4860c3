"""Training data: JSONL of chats (``{"messages": [...]}``) or pairs (``{"prompt": ..., "completion": ...}``),
rendered with the model's chat template and tokenized with loss on the assistant's tokens only.

Each assistant turn's characters are found by rendering the chat up to it (with the generation
prompt) and through it; the tokens whose text starts inside that span are trained on, every
other token is context only (label -100, transformers' ignore index). An example longer than
``max_length`` tokens is cut to it (with a warning); one left with no trained token is dropped.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chat import render_chat
from ..errors import InputFileError, InvalidParameterError

log = logging.getLogger(__name__)
IGNORE = -100
MAX_DATA_BYTES = 256 << 20
MAX_LINE = 1 << 20
ROLES = ("system", "user", "assistant")
Tokenize = Callable[[str], tuple[list[int], list[tuple[int, int]]]]  # text -> ids, character offsets


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    labels: tuple[int, ...]  # the id where trained on, IGNORE elsewhere

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass(frozen=True)
class Dataset:
    train: tuple[Example, ...]
    held_out: tuple[Example, ...]
    truncated: int  # examples cut to max_length
    dropped: int  # examples with nothing left to train on after the cut


def read_chats(path: Path) -> list[list[dict[str, str]]]:
    """Every line of ``path`` as a chat; the first bad line is named with what is wrong."""
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise InputFileError(f"{path} is {size:,} bytes; at most {MAX_DATA_BYTES:,}")
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror}") from None
    chats = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        chats.append(_chat(line, f"{path.name} line {n}"))
    if not chats:
        raise InputFileError(f"{path} has no examples; write one JSON object per line")
    return chats


def _chat(line: bytes, where: str) -> list[dict[str, str]]:
    if len(line) > MAX_LINE:
        raise InputFileError(f"{where}: {len(line):,} bytes; at most {MAX_LINE:,} per example")
    try:
        item = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{where}: not JSON ({exc}); each line is one JSON object") from None
    if not isinstance(item, dict):
        raise InputFileError(f"{where}: a JSON {type(item).__name__}, not an object with 'messages' or 'prompt'")
    if "messages" in item:
        messages = item["messages"]
        if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
            raise InputFileError(f"{where}: 'messages' must be a list of {{\"role\": ..., \"content\": \"...\"}} "
                                 f"with roles {', '.join(ROLES)}")
        chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif isinstance(item.get("prompt"), str) and isinstance(item.get("completion"), str):
        chat = [{"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": item["completion"]}]
    else:
        raise InputFileError(f"{where}: needs 'messages', or 'prompt' and 'completion' (strings)")
    if not any(m["role"] == "assistant" and m["content"] for m in chat):
        raise InputFileError(f"{where}: no assistant turn to learn from")
    return chat


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)


def encode(chat: Sequence[Mapping[str, str]], template: str, tokenize: Tokenize, max_length: int,
           specials: tuple[str, str]) -> tuple[Example, bool]:
    """One chat as ids and labels (assistant tokens only); and whether it was cut to ``max_length``."""
    bos, eos = specials
    full = render_chat(template, chat, add_generation_prompt=False, bos_token=bos, eos_token=eos)
    spans = []
    for i, m in enumerate(chat):
        if m["role"] != "assistant":
            continue
        before = render_chat(template, chat[:i], add_generation_prompt=True, bos_token=bos, eos_token=eos)
        through = render_chat(template, chat[: i + 1], add_generation_prompt=False, bos_token=bos, eos_token=eos)
        if not full.startswith(through) or not through.startswith(before):
            raise InvalidParameterError(
                "the chat template renders a chat differently from its beginning, so "
                "the assistant's tokens cannot be told apart; give prompt/completion pairs"
            )
        spans.append((len(before), len(through)))
    ids, offsets = tokenize(full)
    labels = [
        t if any(a <= start < b for a, b in spans) else IGNORE for t, (start, _) in zip(ids, offsets, strict=True)
    ]
    cut = len(ids) > max_length
    return Example(tuple(ids[:max_length]), tuple(labels[:max_length])), cut


def build(chats: Sequence[Sequence[Mapping[str, str]]], template: str, tokenize: Tokenize, *, max_length: int,
          held_out: float, seed: int, specials: tuple[str, str]) -> Dataset:
    """Encode every chat; split ``held_out`` of them (shuffled with ``seed``) off for evaluation."""
    if not 0 <= held_out < 1:
        raise InvalidParameterError(f"held-out fraction {held_out} is out of range; valid: 0 to below 1")
    examples, truncated, dropped = [], 0, 0
    for chat in chats:
        example, cut = encode(chat, template, tokenize, max_length, specials)
        truncated += cut
        if example.trained == 0:
            dropped += 1
            continue
        examples.append(example)
    if truncated:
        log.warning("%d example(s) longer than --max-length %d tokens were cut to it", truncated, max_length)
    if dropped:
        log.warning("%d example(s) had no assistant token left within --max-length and were dropped", dropped)
    if not examples:
        raise InvalidParameterError(f"no example has an assistant token within --max-length {max_length}; raise it")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_held = round(len(examples) * held_out)
    if held_out and n_held == 0 and len(examples) > 1:
        n_held = 1
    if n_held >= len(examples):
        raise InvalidParameterError(f"{len(examples)} example(s) leave nothing to train on after the held-out split")
    held = tuple(examples[i] for i in order[:n_held])
    train = tuple(examples[i] for i in order[n_held:])
    return Dataset(train, held, truncated, dropped)
