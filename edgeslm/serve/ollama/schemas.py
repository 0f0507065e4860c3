"""Ollama's request bodies (``api/types.go``), checked at the edge; unknown fields are ignored as Ollama does."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...errors import InvalidParameterError, RequestTooLargeError
from ...modelfile.parser import MAX_VALUE_CHARS
from ..limits import MAX_CONTEXT_IDS, MAX_EMBED_INPUTS, MAX_MESSAGES, MAX_NAME, MAX_STOP, MAX_STOP_CHARS, MAX_TOOL_CALLS

Name = str  # checked by the store's parser; the length bound is on each field
KeepAlive = str | float | None
Format = Literal["json"] | dict[str, Any] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Options(BaseModel):
    """Ollama's runtime options; the ones llama.cpp's samplers do not have are accepted and ignored."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    num_ctx: int | None = None
    num_predict: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = Field(None, max_length=MAX_STOP)
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    deterministic: bool | None = None  # edgeslm's: decoded alone, the same reply whatever runs beside it


class GenerateRequest(_Body):
    model: str = Field(max_length=MAX_NAME)
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = Field(None, max_length=MAX_CONTEXT_IDS)
    stream: bool = True
    raw: bool = False
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    images: list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    truncate: bool = False  # asked: an over-long prompt loses its start; else it is refused (never cut silently)


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOL_CALLS)
    tool_name: str | None = Field(None, max_length=MAX_NAME)


class ChatRequest(_Body):
    model: str = Field(max_length=MAX_NAME)
    messages: list[Message] = Field(default_factory=list, max_length=MAX_MESSAGES)
    format: Format = None
    options: Options | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    tools: list[Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    truncate: bool = False  # asked: an over-long chat loses its oldest turns; else it is refused


class EmbedRequest(_Body):
    model: str = Field(max_length=MAX_NAME)
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: int | None = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if len(texts) > MAX_EMBED_INPUTS:
            raise RequestTooLargeError(f"input has {len(texts):,} texts; at most {MAX_EMBED_INPUTS:,} per request: "
                                       "send them in several requests")
        return texts


class EmbeddingsRequest(_Body):
    model: str = Field(max_length=MAX_NAME)
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class ModelRequest(_Body):
    """``show``, ``delete`` and ``pull`` name a model as ``model`` (older clients: ``name``)."""

    model: str | None = Field(None, max_length=MAX_NAME)
    name: str | None = Field(None, max_length=MAX_NAME)
    stream: bool = True
    insecure: bool = False
    verbose: bool = False

    @property
    def target(self) -> str:
        target = self.model or self.name
        if not target:
            raise InvalidParameterError("the request names no model; give 'model'")
        return target


class CreateRequest(_Body):
    model: str = Field(max_length=MAX_NAME)
    from_: str | None = Field(None, alias="from", max_length=MAX_NAME)
    quantize: str | None = Field(None, max_length=32)
    system: str | None = Field(None, max_length=MAX_VALUE_CHARS)
    parameters: dict[str, Any] | None = None
    template: str | None = Field(None, max_length=1 << 16)
    files: dict[str, str] | None = Field(None, max_length=64)
    adapters: dict[str, str] | None = Field(None, max_length=64)
    messages: list[Message] | None = Field(None, max_length=MAX_MESSAGES)
    license: str | list[str] | None = None
    modelfile: str | None = Field(None, max_length=1 << 20)  # older clients send the Modelfile's text
    stream: bool = True


class CopyRequest(_Body):
    source: str = Field(max_length=MAX_NAME)
    destination: str = Field(max_length=MAX_NAME)


def check_stops(stops: list[str] | None) -> tuple[str, ...]:
    stops = stops or []
    if len(stops) > MAX_STOP:
        raise InvalidParameterError(f"{len(stops):,} stop strings; at most {MAX_STOP}")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise InvalidParameterError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
    return tuple(s for s in stops if s)


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: KeepAlive) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a Go duration ("5m", "1h30m", "-1"); None: default."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidParameterError(f'keep_alive {text[:40]!r} is not a duration; use e.g. 300, "5m", "1h" or -1')
    return sum(float(n) * _UNIT[u] for n, u in parts)
