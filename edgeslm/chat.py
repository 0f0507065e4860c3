"""Chat templates from model files, rendered only in a capped Jinja2 sandbox.

A chat template is code shipped inside a hostile file. ``ImmutableSandboxedEnvironment``
blocks attribute tricks (``().__class__.__base__.__subclasses__()``) but still renders
``{{ 'a' * 10**9 }}`` or loops for minutes, so on top of it:

- arithmetic that would build a huge string or number is refused before it runs;
- any integer argument to a call or filter above the output cap is refused (``center``,
  ``ljust``, ``indent``... would otherwise allocate it);
- a trace function stops the template's own code past a time limit;
- the output stops at a size cap.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import FrameType
from typing import Any

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError

OUTPUT_CAP = 4_000_000  # characters of rendered prompt
TIME_CAP = 2.0  # seconds of template code
_MAX_EXPONENT_BITS = 256
_TEMPLATE_FILE = "<template>"


class _TemplateTimeout(Exception):
    pass


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple, bytes)) else None


def _check_ints(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > OUTPUT_CAP:
            raise ChatTemplateError(f"chat template refused: it passes {value:,} to a call (cap {OUTPUT_CAP:,})")


def _capped_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_ints(args, kwargs)
        return fn(*args, **kwargs)

    for attr in ("jinja_pass_arg",):  # keep Jinja's context/eval-context markers
        if hasattr(fn, attr):
            setattr(wrapper, attr, getattr(fn, attr))
    return wrapper


class _CappedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _finite_number(left) and _finite_number(right):
            if abs(right) > 1 and abs(left) > 1 and abs(right) * math.log2(abs(left)) > _MAX_EXPONENT_BITS:
                raise ChatTemplateError(f"chat template refused: {left} ** {right} is too large")
        if operator == "*":
            seq, count = (left, right) if _size(left) is not None else (right, left)
            if _size(seq) is not None and isinstance(count, int) and _size(seq) * count > OUTPUT_CAP:  # type: ignore[operator]
                raise ChatTemplateError(f"chat template refused: it repeats a value {count:,} times")
        if operator == "+" and _size(left) is not None and _size(right) is not None:
            if _size(left) + _size(right) > OUTPUT_CAP:  # type: ignore[operator]
                raise ChatTemplateError("chat template refused: it concatenates past the output cap")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_ints(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template raised: {message}")


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _make_environment() -> _CappedSandbox:
    env = _CappedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.filters = {name: _capped_filter(fn) for name, fn in env.filters.items()}
    env.filters["tojson"] = _capped_filter(_tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt)[:100])
    return env


def _deadline_tracer(deadline: float) -> Callable[[FrameType, str, Any], Any]:
    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and time.monotonic() > deadline:
            raise _TemplateTimeout
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        # Trace only the template's compiled code; Jinja names it "<template>".
        return local if frame.f_code.co_filename == _TEMPLATE_FILE else None

    return global_


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    time_cap: float = TIME_CAP,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render ``messages`` (and ``tools``, OpenAI's shape) through a model's chat ``template``;
    raise ChatTemplateError on anything unsafe."""
    env = _make_environment()
    try:
        compiled = env.from_string(template)
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from None
    variables = {
        "messages": [dict(m) for m in messages],
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    now = datetime.now()  # llama.cpp's extra context (common_chat_extra_context): Llama 3.1 prints the date
    variables |= {"date_string": now.strftime("%d %b %Y"), "datetime": now.strftime("%b %d %Y")}
    if tools is not None:  # as transformers passes them: undefined unless given (templates test ``tools is defined``)
        variables["tools"] = [dict(t) for t in tools]
    previous = sys.gettrace()
    sys.settrace(_deadline_tracer(time.monotonic() + time_cap))
    pieces: list[str] = []
    size = 0
    try:
        for piece in compiled.generate(**variables):
            size += len(piece)
            if size > OUTPUT_CAP:
                raise ChatTemplateError(f"chat template stopped: its output passed {OUTPUT_CAP:,} characters")
            pieces.append(piece)
    except _TemplateTimeout:
        raise ChatTemplateError(f"chat template stopped: it ran past {time_cap:g} s") from None
    except SecurityError as exc:
        raise ChatTemplateError(f"chat template refused as unsafe ({exc}); nothing it asked for was run") from None
    except ChatTemplateError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure inside hostile template code is the template's
        raise ChatTemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.settrace(previous)
    return "".join(pieces)
