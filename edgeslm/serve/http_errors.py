"""Error bodies for both dialects, in one place: Ollama's ``{"error": msg}``, OpenAI's nested object.

The status comes from ``errors.http_status_for``; the message is the error's own, with
anything that looks like a filesystem path replaced, and never an object's repr or a traceback.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import JSONResponse

from ..errors import EdgeslmError, http_status_for

# a filesystem path (two parts or more), but not this server's own routes, which messages name as advice
_PATH = re.compile(r"(?<![\w.:/-])/(?!(?:api|v1|edgeslm/v1|ui)/)(?:[\w.@+-]+/)+[\w.@+-]*")
MAX_MESSAGE = 2000
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 503: "overloaded"}


def public_message(message: str) -> str:
    """``message`` without filesystem paths, cut to a sane length."""
    text = _PATH.sub("<path>", message)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def is_openai(path: str) -> bool:
    """OpenAI's error shape: its API's paths, and llama-server's (which answers in that shape)."""
    return path == "/v1" or path.startswith("/v1/") or path in ("/tokenize", "/detokenize", "/infill")


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                    507: "invalid_request_error"}


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    message = public_message(message)
    if is_anthropic(path):
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    if not is_openai(path):
        return {"error": message}
    kind = _OPENAI_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": _OPENAI_CODES.get(status)}}


_HEADERS = {401: {"WWW-Authenticate": 'Bearer realm="edgeslm"'}, 503: {"Retry-After": "1"}}


def error_response(path: str, status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(path, status, message), status_code=status, headers=_HEADERS.get(status))


def exception_response(path: str, exc: EdgeslmError) -> JSONResponse:
    return error_response(path, http_status_for(exc), str(exc))
