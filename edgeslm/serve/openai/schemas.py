"""OpenAI's request bodies (chat completions, completions, embeddings), checked at the edge."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...errors import InvalidParameterError, RequestTooLargeError
from ..limits import (
    MAX_EMBED_INPUTS,
    MAX_EMBED_TOKENS,
    MAX_MESSAGES,
    MAX_NAME,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOOL_CALLS,
    MAX_TOP_LOGPROBS,
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOL_CALLS)
    tool_call_id: str | None = Field(None, max_length=MAX_NAME)

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(p.type != "text" for p in self.content):
            kinds = sorted({p.type for p in self.content if p.type != "text"})
            raise InvalidParameterError(f"message parts of type {', '.join(kinds)[:100]} are not supported; send text")
        return "".join(p.text or "" for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    def spec(self) -> str | dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return "json"
        schema = (self.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidParameterError("response_format json_schema needs json_schema.schema, a JSON schema object")
        return schema


class TextFormat(_Body):
    """The Responses API's ``text.format``: the schema sits beside the type (chat nests it)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    name: str | None = None
    strict: bool | None = None

    def spec(self) -> str | dict[str, Any] | None:
        if self.type == "json_schema" and not isinstance(self.json_schema, dict):
            raise InvalidParameterError("text.format json_schema needs schema, a JSON schema object")
        return ResponseFormat(type=self.type, json_schema={"schema": self.json_schema}).spec()


class ResponseText(_Body):
    format: TextFormat = Field(default_factory=lambda: TextFormat.model_validate({}))


class _Sampling(_Body):
    model: str = Field(max_length=MAX_NAME)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None  # llama.cpp's extension, as llama-server accepts it
    min_p: float | None = None
    repeat_penalty: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    max_tokens: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    deterministic: bool | None = None  # edgeslm's extension: decoded alone, the same reply whatever runs beside it
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise InvalidParameterError(f"{len(stops):,} stop strings; at most {MAX_STOP}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise InvalidParameterError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
        return tuple(s for s in stops if s)

    def choices(self, slots: int) -> int:
        """How many choices to return: each is decoded in a slot of its own, at the same time."""
        if self.n is None:
            return 1
        if not 1 <= self.n <= slots:
            raise InvalidParameterError(
                f"n={self.n} is out of range; valid: 1 to {slots}, the parallel slots of this server "
                "(each choice takes one; serve --parallel sets them)"
            )
        return self.n


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] = "disabled"  # the Responses API's: auto drops the oldest turns


class ResponsesRequest(_Body):
    """The Responses API's body (the minimal part edgeslm answers)."""

    model: str = Field(max_length=MAX_NAME)
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)]  # the bound on items, not on text
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    store: bool | None = None  # None: OpenAI's default, kept
    previous_response_id: str | None = None
    truncation: Literal["auto", "disabled"] = "disabled"  # auto: an over-long input loses its oldest turns
    text: ResponseText = Field(default_factory=ResponseText)  # text.format: json_object or json_schema


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = ""
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    max_tokens: int | None = 16  # OpenAI's default for completions


class EmbeddingRequest(_Body):
    model: str = Field(max_length=MAX_NAME)
    # a text, texts, one token-id array or several (as LangChain's OpenAIEmbeddings sends by default)
    input: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def texts(self) -> list[str | list[int]]:
        given = self.input
        texts: list[str | list[int]] = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) \
            else list(given)  # type: ignore[arg-type]
        if len(texts) > MAX_EMBED_INPUTS:
            raise RequestTooLargeError(f"input has {len(texts):,} texts; at most {MAX_EMBED_INPUTS:,} per request: "
                                       "send them in several requests")
        if not all(texts):
            raise InvalidParameterError("input must not contain empty strings or empty token arrays")
        if sum(len(t) for t in texts if not isinstance(t, str)) > MAX_EMBED_TOKENS:
            raise InvalidParameterError(f"input holds more than {MAX_EMBED_TOKENS:,} token ids; send fewer")
        return texts
