"""A model's stored parameters: the options ``serve`` and ``run`` apply, typed and range-checked
once, whether they come from ``PARAMETER`` lines (text) or ``/api/create``'s ``parameters`` (JSON)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..engines.base import MAX_CONTEXT, MAX_SEED, MAX_STOP, MAX_STOP_CHARS, SamplingParams
from ..errors import InvalidParameterError, ModelfileError
from ..formats.kv_cache import KVCache
from .parser import Command

log = logging.getLogger(__name__)

# name -> type; every option the server's Ollama and OpenAI APIs apply (and ``run`` with them)
PARAMETERS: dict[str, type] = {
    "num_ctx": int, "num_predict": int, "temperature": float, "top_k": int, "top_p": float, "min_p": float,
    "seed": int, "stop": list, "repeat_penalty": float, "repeat_last_n": int, "presence_penalty": float,
    "frequency_penalty": float, "kv_type": str,
}

SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
            "frequency_penalty")
# Ollama's options that llama.cpp's samplers here have no use for: accepted, not stored, as Ollama
# accepts its deprecated ones (a Modelfile from Ollama's library still loads).
IGNORED = frozenset({
    "num_keep", "typical_p", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "numa", "low_vram",
    "f16_kv", "logits_all", "vocab_only", "use_mlock", "penalize_newline", "mirostat", "mirostat_tau",
    "mirostat_eta", "tfs_z",
})


def from_commands(commands: Iterable[Command], where: str = "Modelfile") -> dict[str, Any]:
    """PARAMETER lines as typed values; ``stop`` repeats and collects. An error names the line."""
    found: dict[str, Any] = {}
    for c in commands:
        try:
            name, value = c.key, _typed(c.key, c.value)
        except InvalidParameterError as exc:
            raise ModelfileError(f"{where} (line {c.line}): {exc}") from None
        if value is None:
            continue
        if name == "stop":
            found.setdefault("stop", []).extend(value)
        else:
            found[name] = value
    try:
        return check(found)
    except InvalidParameterError as exc:
        line = next((c.line for c in commands if c.key == getattr(exc, "parameter", None)), None)
        raise ModelfileError(f"{where}{f' (line {line})' if line else ''}: {exc}") from None


def _typed(name: str, text: str) -> Any:
    if name in IGNORED:
        log.warning("PARAMETER %s is one of Ollama's options that edgeslm does not use; ignored", name)
        return None
    kind = PARAMETERS.get(name)
    if kind is None:
        raise InvalidParameterError(f"unknown parameter {name[:40]!r}; valid: {', '.join(PARAMETERS)}")
    if kind is list:
        return [text]
    if kind is str:
        return text
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        raise InvalidParameterError(f"parameter {name} must be {'an integer' if kind is int else 'a number'}, "
                                    f"not {text[:40]!r}") from None


class _ParameterError(InvalidParameterError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def check(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (JSON or from PARAMETER lines) checked against the ranges the server applies;
    returned as stored. Unknown names and wrong types are refused."""
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if name in IGNORED:
            continue
        kind = PARAMETERS.get(name)
        if kind is None:
            raise _ParameterError(name, f"unknown parameter {str(name)[:40]!r}; valid: {', '.join(PARAMETERS)}")
        checked[name] = _coerce(name, kind, value)
    sampling = {k: checked[k] for k in SAMPLING if k in checked}
    try:
        SamplingParams(**sampling)
    except InvalidParameterError as exc:
        bad = next((k for k in sampling if f"{k}=" in str(exc)), "")
        raise _ParameterError(bad, str(exc)) from None
    _range(checked, "num_ctx", lambda v: 16 <= v <= MAX_CONTEXT, "16 to 1,048,576")
    _range(checked, "num_predict", lambda v: v in (-1, -2) or 1 <= v <= MAX_CONTEXT,
           "-1 (no limit), -2 (fill the context) or 1 to 1,048,576")
    _range(checked, "seed", lambda v: -1 <= v <= MAX_SEED, f"-1 (random) to {MAX_SEED}")
    stops = checked.get("stop", [])
    if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS or not s for s in stops):
        raise _ParameterError("stop", f"stop: at most {MAX_STOP} strings of 1 to {MAX_STOP_CHARS} characters")
    return checked


def _coerce(name: str, kind: type, value: Any) -> Any:
    if kind is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise _ParameterError(name, f"parameter {name} must be a string or a list of strings")
        return list(items)
    if kind is str:
        if not isinstance(value, str):
            raise _ParameterError(name, f"parameter {name} must be a string, not {str(value)[:40]!r}")
        try:
            return str(KVCache.parse(value))  # the one str parameter: checked and stored in one spelling
        except InvalidParameterError as exc:
            raise _ParameterError(name, str(exc)) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _ParameterError(name, f"parameter {name} must be a number, not {str(value)[:40]!r}")
    if kind is int:
        if value != int(value):
            raise _ParameterError(name, f"parameter {name} must be an integer, not {value!r}")
        return int(value)
    return float(value)


def _range(checked: dict[str, Any], name: str, ok: Any, valid: str) -> None:
    if name in checked and not ok(checked[name]):
        raise _ParameterError(name, f"{name}={checked[name]!r} is out of range; valid: {valid}")
