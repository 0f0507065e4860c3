"""Every request passes here first: Host and Origin checks, body limits, keys and roles, then the
audit line, the request counter and the access log once the response has been sent.

The permission a route needs is looked up on the **raw** request path (before any decoding or
normalising), so ``/api/%64elete`` or ``//api/delete`` cannot reach a route under another
route's permission: a path with percent-escapes is refused outright, and any other path that is
not in the table needs a valid key of any role (and then finds no route).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..access.audit import AuditRecord
from ..access.keys import Action, ApiKey
from ..errors import (
    AuthenticationError,
    EdgeslmError,
    InvalidParameterError,
    PermissionDeniedError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from .http_errors import exception_response
from .state import ServerState

log = logging.getLogger("edgeslm.serve.access")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

A = Action
ROUTES: dict[str, Action | None] = {  # None: any valid key
    "/": None,
    "/api/version": None,
    "/api/generate": A.GENERATE,
    "/api/chat": A.GENERATE,
    "/v1/chat/completions": A.GENERATE,
    "/v1/completions": A.GENERATE,
    "/v1/responses": A.GENERATE,
    "/v1/messages": A.GENERATE,  # Anthropic's
    "/v1/messages/count_tokens": A.GENERATE,
    "/api/embed": A.EMBED,
    "/api/embeddings": A.EMBED,
    "/v1/embeddings": A.EMBED,
    "/tokenize": A.EMBED,  # llama-server's: they run the model's runner, as an embedding does
    "/detokenize": A.EMBED,
    "/infill": A.GENERATE,  # llama-server's code completion
    "/api/tags": A.LIST,
    "/v1/models": A.LIST,
    "/api/show": A.SHOW,
    "/api/ps": A.PS,
    "/metrics": A.METRICS,
    "/api/pull": A.PULL,
    "/api/create": A.CREATE,
    "/api/copy": A.COPY,
    "/api/delete": A.DELETE,
    "/edgeslm/v1/session": None,  # the web page: who am I, what may I do
    "/edgeslm/v1/models": A.SHOW,
    "/edgeslm/v1/server": A.PS,
    "/edgeslm/v1/audit": A.AUDIT,
    "/edgeslm/v1/audit.csv": A.AUDIT,
    "/edgeslm/v1/manifests": A.FETCH,  # another edgeslm pulls (sync_routes)
    "/edgeslm/v1/publish": A.CREATE,  # another edgeslm pushes
}
PREFIXES: dict[str, Action] = {"/v1/models/": A.LIST, "/v1/responses/": A.GENERATE,  # a kept response
                               "/api/blobs/": A.CREATE, "/edgeslm/v1/blobs/": A.FETCH,
                               "/edgeslm/v1/uploads/": A.CREATE}
UI = "/ui"  # the web page's files: public (they hold no data; every call they make carries a key)
UI_LABEL = UI + "/*"
HEALTH = "/healthz"  # for probes (Kubernetes, Docker HEALTHCHECK): public, says only that the server answers
PUBLIC = frozenset({UI_LABEL, HEALTH})  # no key needed, not audited
UPLOADS = (b"/api/blobs/", b"/edgeslm/v1/uploads/")  # a file's bytes, not JSON: their own type and size limit
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
JSON_TYPES = ("application/json", "", "application/x-www-form-urlencoded")  # the last: curl -d's default
# Every answer may not be framed, sniffed or leak its address; the page's own files run only
# scripts and styles of this origin (no inline script, no remote origin), an API answer nothing.
SECURITY_HEADERS = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"))
UI_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
API_POLICY = b"default-src 'none'; frame-ancestors 'none'"


@dataclass(frozen=True)
class GuardOptions:
    loopback_only: bool  # bound to a loopback address: refuse other Host names (DNS rebinding)
    allowed_hosts: frozenset[str] = frozenset()
    cors_origins: frozenset[str] = frozenset()
    max_body: int = 8 * 2**20
    max_upload: int = 64 * 2**30  # bytes of one uploaded file (/api/blobs)


def escape(text: str, limit: int = 300) -> str:
    """``text`` safe for one log line: control characters (and non-printables) escaped, length capped."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def route_of(raw_path: bytes) -> tuple[str, Action | None, bool]:
    """(a route label for metrics, the action it needs, whether the path is a known route)."""
    path = raw_path.decode("latin-1")
    if is_ui(path):
        return UI_LABEL, None, True
    if path == HEALTH:
        return HEALTH, None, True
    if path in ROUTES:
        return path, ROUTES[path], True
    for prefix, action in PREFIXES.items():
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            return prefix + "{model}", action, True
    return "other", None, False


def is_ui(path: str) -> bool:
    return path == UI or path.startswith(UI + "/")


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    def __init__(self, app: ASGIApp, st: ServerState, options: GuardOptions) -> None:
        self.app, self.st, self.options = app, st, options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {}).update(started=started, audit={})
        raw = scope.get("raw_path") or scope["path"].encode()
        raw = raw.split(b"?", 1)[0]
        label, action, known = route_of(raw)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status = [0]
        policy = UI_POLICY if label == UI_LABEL else API_POLICY

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS,
                                      (b"content-security-policy", policy)]
            await send(message)

        key: ApiKey | None = None
        try:
            try:
                self._check(scope, raw, headers)
                preflight = scope["method"] == "OPTIONS" and "origin" in headers  # CORS answers it; no key is sent
                if self.st.keys is not None and not preflight and label not in PUBLIC:
                    key = self._key(headers)
                    self._permit(key, action)
                    scope["state"]["key"] = key
            except EdgeslmError as exc:  # refused here, answered in the dialect of the path
                await exception_response(scope["path"], exc)(scope, receive, sending)
            else:
                await self.app(scope, self._limited(receive, self._limit(raw)), sending)
        finally:
            self._record(scope, label, key, status[0] or 500, started)

    def _check(self, scope: Scope, raw: bytes, headers: dict[str, str]) -> None:
        """Host, Origin, path and body checks that come before any key."""
        host = headers.get("host")
        if self.options.loopback_only and host is not None:
            name = _host_name(host).lower()
            if name not in LOOPBACK_NAMES and name not in self.options.allowed_hosts:
                raise PermissionDeniedError(
                    f"Host '{escape(host, 80)}' is not allowed: this server listens on loopback only "
                    "(DNS rebinding protection); use 127.0.0.1 or localhost, or start it with --allow-host NAME"
                )
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host):
            raise PermissionDeniedError(
                f"Origin '{escape(origin, 80)}' is not allowed; start the server with --cors-origin ORIGIN"
            )
        if b"%" in raw:
            raise InvalidParameterError(
                "percent-encoded characters are not accepted in the path; send the path as the API documents it"
            )
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            limit = self._limit(raw)
            if raw.startswith(UPLOADS):
                if kind not in (*JSON_TYPES, "application/octet-stream"):
                    raise UnsupportedMediaTypeError(f"an upload is application/octet-stream, not '{escape(kind, 60)}'")
            elif kind not in JSON_TYPES:
                raise UnsupportedMediaTypeError(
                    f"the body must be JSON (Content-Type: application/json), not '{escape(kind, 60)}'"
                )
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                raise _too_large(limit)

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        """Listed origins, and this server's own (its web page: a browser sends Origin with every
        POST, same-origin too). Host was checked above when it matters (loopback: DNS rebinding);
        off loopback every call needs a key, which another origin's page does not hold."""
        allowed = self.options.cors_origins
        own = host is not None and origin in (f"http://{host}", f"https://{host}")
        return own or origin in allowed or "*" in allowed

    def _limit(self, raw: bytes) -> int:
        return self.options.max_upload if raw.startswith(UPLOADS) else self.options.max_body

    def _key(self, headers: dict[str, str]) -> ApiKey:
        assert self.st.keys is not None
        given = headers.get("authorization")
        if given is None and "x-api-key" in headers:  # Anthropic's clients send the key so
            given = "Bearer " + headers["x-api-key"]
        if given is None:
            raise AuthenticationError("an API key is required: send 'Authorization: Bearer KEY' (or 'x-api-key: KEY')")
        if not given.startswith("Bearer "):
            raise AuthenticationError("the Authorization header must be 'Bearer KEY' (with 'Bearer' capitalised)")
        key = self.st.keys.find(given[len("Bearer ") :].strip())
        if key is None:
            raise AuthenticationError("the API key is not valid")
        return key

    @staticmethod
    def _permit(key: ApiKey, action: Action | None) -> None:
        if action is not None and not key.may(action):
            raise PermissionDeniedError(f"the role '{key.role}' of key '{key.id}' may not {action.value}")

    def _limited(self, receive: Receive, limit: int) -> Receive:
        seen = [0]

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise _too_large(limit)
            return message

        return receiving

    def _record(self, scope: Scope, label: str, key: ApiKey | None, status: int, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        facts = scope["state"].get("audit", {})
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "-"
        path = escape(scope.get("raw_path", b"").decode("latin-1") or scope["path"])
        self.st.metrics.requests.labels(label, str(status)).inc()
        log.info("%s %s %s %d %.1fms key=%s", address, scope["method"], path, status, ms, key.id if key else "-")
        if self.st.audit is None or label in PUBLIC:  # public files and probes: no one's request to audit
            return
        self.st.audit.write(AuditRecord(
            time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            key_id=key.id if key else None, role=key.role if key else None, client=address,
            method=scope["method"], route=path, model=_str(facts.get("model")), status=status,
            tokens_in=int(facts.get("tokens_in", 0)), tokens_out=int(facts.get("tokens_out", 0)),
            duration_ms=round(ms, 1), prompt=facts.get("prompt") if self.st.audit_prompts else None,
        ))


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"the body is larger than this server's limit of {limit:,} bytes")


def _str(value: Any) -> str | None:
    return None if value is None else escape(str(value), 256)


def origins(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.rstrip("/") for v in values)
