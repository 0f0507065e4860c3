"""The server's guard and limits: keys and roles on every route, Host and Origin, hostile bodies.

Each bad request is followed by a normal one that must succeed: the server keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeslm.access.audit import report, verify
from edgeslm.serve.guard import ROUTES

from . import servekit
from .fake_runner import FakeRunner
from .servekit import audit_text, serving

models, keyed = servekit.models, servekit.keyed  # the shared fixtures

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
# (method, path, body) for every route; bodies valid enough to pass the role check.
EVERY_ROUTE = [
    ("GET", "/", None),
    ("GET", "/api/version", None),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x"}),
    ("POST", "/api/chat", CHAT),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "x"}),
    ("POST", "/v1/responses", {"model": "tiny", "input": "x"}),
    ("POST", "/v1/messages", {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/v1/messages/count_tokens", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/api/embed", {"model": "tiny", "input": "x"}),
    ("POST", "/api/embeddings", {"model": "tiny", "prompt": "x"}),
    ("POST", "/v1/embeddings", {"model": "tiny", "input": "x"}),
    ("POST", "/tokenize", {"model": "tiny", "content": "x"}),
    ("POST", "/detokenize", {"model": "tiny", "tokens": [100]}),
    ("POST", "/infill", {"model": "tiny", "input_prefix": "def f(", "input_suffix": "\n"}),
    ("GET", "/api/tags", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny", None),
    ("POST", "/api/show", {"model": "tiny"}),
    ("GET", "/api/ps", None),
    ("GET", "/metrics", None),
    ("POST", "/api/pull", {"model": "nope-model", "stream": False}),
    ("POST", "/api/create", {"model": "c", "from": "tiny"}),
    ("POST", "/api/copy", {"source": "tiny", "destination": "t2"}),
    ("DELETE", "/api/delete", {"model": "t2"}),
    ("GET", "/edgeslm/v1/session", None),
    ("GET", "/edgeslm/v1/models", None),
    ("GET", "/edgeslm/v1/server", None),
    ("GET", "/edgeslm/v1/audit", None),
    ("GET", "/edgeslm/v1/audit.csv", None),
    ("GET", "/edgeslm/v1/manifests", None),
    ("POST", "/edgeslm/v1/publish", {"manifests": []}),
]
ADMIN_ONLY = {"/api/pull", "/api/create", "/api/copy", "/api/delete", "/edgeslm/v1/audit", "/edgeslm/v1/audit.csv",
              "/edgeslm/v1/publish"}
READER_MAY = {"/", "/api/version", "/api/tags", "/v1/models", "/v1/models/tiny", "/api/show", "/metrics",
              "/edgeslm/v1/session", "/edgeslm/v1/models"}


@pytest.fixture
def url(models: Path) -> Iterator[str]:
    with serving(models, FakeRunner, parallel=2, ctx=256, queue=2) as base:
        yield base


def call(
    base: str, method: str, path: str, body: Any, key: str | None = None, scheme: str = "Bearer"
) -> httpx.Response:
    headers = {"Authorization": f"{scheme} {key}"} if key is not None else {}
    return httpx.request(method, base + path, json=body, headers=headers, timeout=30)


def test_the_route_table_covers_every_route() -> None:
    assert {p for _, p, _ in EVERY_ROUTE} - {"/v1/models/tiny"} == set(ROUTES)


def test_keys_are_required_on_every_route_and_roles_are_enforced(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    for method, path, body in EVERY_ROUTE:
        for key, scheme in (
            (None, "Bearer"),
            ("esk-wrong", "Bearer"),
            (keys["admin"], "bearer"),
            (keys["admin"], "Basic"),
        ):
            r = call(base, method, path, body, key, scheme)
            assert r.status_code == 401, (path, key, scheme, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert keys["admin"] not in r.text
    for role, key in keys.items():
        for method, path, body in EVERY_ROUTE:
            r = call(base, method, path, body, key)
            allowed = (
                role == "admin"
                or (role == "user" and path not in ADMIN_ONLY | {"/metrics"})
                or (role == "reader" and path in READER_MAY)
            )
            assert (r.status_code != 403) == allowed, (role, path, r.status_code, r.text)
            if not allowed:
                assert f"role '{role}'" in r.text
    assert (
        call(base, "POST", "/api/generate", {"model": "tiny", "prompt": "x", "stream": False}, keys["user"]).status_code
        == 200
    )
    anthropic_style = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    for key, status in ((keys["user"], 200), ("esk-wrong", 401)):  # Anthropic's clients send x-api-key
        r = httpx.post(base + "/v1/messages", json=anthropic_style, headers={"x-api-key": key}, timeout=30)
        assert r.status_code == status, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"


def test_the_audit_log_names_keys_never_holds_them_and_reports_refusals(
    keyed: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    base, keys = keyed
    call(base, "POST", "/api/generate", {"model": "tiny", "prompt": "x", "stream": False}, keys["user"])
    call(base, "POST", "/api/delete", {"model": "tiny"}, keys["reader"])
    call(base, "GET", "/api/tags", None, "esk-wrong")
    text = audit_text(tmp_path / "audit.jsonl", 3)
    assert all(k not in text for k in keys.values()) and "esk-wrong" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(r["key_id"], r["role"], r["status"]) for r in lines] == [
        ("user-1", "user", 200),
        ("reader-1", "reader", 403),
        (None, None, 401),
    ]
    assert verify(tmp_path / "audit.jsonl").ok
    r = report(tmp_path / "audit.jsonl")
    assert r.by["key"]["user-1"].tokens_out > 0 and r.by["key"]["reader-1"].refused == 1


def test_percent_encoded_paths_cannot_reach_another_routes_permission(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    for path in ("/api/%64elete", "/api%2Fdelete", "/api/delet%65"):
        r = call(base, "DELETE", path, {"model": "tiny"}, keys["user"])
        assert r.status_code == 400 and "percent-encoded" in r.json()["error"]
    for path in ("//api/delete", "/api/delete/"):
        r = call(base, "DELETE", path, {"model": "tiny"}, keys["user"])
        assert r.status_code in (307, 404, 405), (path, r.status_code)
    assert call(base, "GET", "/api/tags", None, keys["user"]).json()["models"][0]["name"] == "tiny:latest"


def test_without_keys_the_server_refuses_to_listen_beyond_loopback(models: Path) -> None:
    from edgeslm.config import resolve_settings
    from edgeslm.errors import UsageError
    from edgeslm.serve.app import create_app
    from edgeslm.serve.options import ServeOptions

    with pytest.raises(UsageError, match="loopback only.*pass that FILE as api_keys"):
        create_app(ServeOptions(host="0.0.0.0", preload=None), resolve_settings(home=models), FakeRunner)


def test_host_and_origin_checks_and_cors(models: Path) -> None:
    with serving(models, FakeRunner, cors_origins=("http://app.example",)) as base:
        evil = httpx.get(base + "/api/tags", headers={"Host": "evil.example"})
        assert evil.status_code == 403 and "DNS rebinding" in evil.json()["error"]
        assert httpx.get(base + "/api/tags", headers={"Host": "localhost:1234"}).status_code == 200
        bad = httpx.post(base + "/api/delete", json={"model": "tiny"}, headers={"Origin": "http://evil.example"})
        assert bad.status_code == 403 and "Origin" in bad.json()["error"]
        ok = httpx.get(base + "/api/tags", headers={"Origin": "http://app.example"})
        assert ok.headers["access-control-allow-origin"] == "http://app.example"
        pre = httpx.options(
            base + "/api/chat", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.example"
        assert httpx.get(base + "/api/tags").status_code == 200
    with serving(models, FakeRunner, cors_origins=("*",)) as base:
        r = httpx.get(base + "/api/tags", headers={"Origin": "http://any.example"})
        assert r.headers["access-control-allow-origin"] == "*" and "access-control-allow-credentials" not in r.headers


BIG = 50 * 2**20
BAD = {
    "invalid JSON": ("/api/generate", b'{"model": "tiny", "prompt": ', 400, "not valid JSON"),
    "a top-level array": ("/api/chat", b"[1, 2]", 400, "JSON object"),
    "a message of the wrong type": ("/api/chat", {"model": "tiny", "messages": ["hi"]}, 400, "messages.0"),
    "a message with an unknown role": (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "role",
    ),
    "100 000 messages": (
        "/api/chat",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}] * 100_000},
        400,
        "messages",
    ),
    "100 000 stop strings": (
        "/v1/completions",
        {"model": "tiny", "prompt": "x", "stop": ["s"] * 100_000},
        400,
        "stop strings",
    ),
    "max_tokens -5": ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    "max_tokens 10^12": ("/v1/chat/completions", {**CHAT, "max_tokens": 10**12}, 400, "max_tokens"),
    "num_predict 10^12": (
        "/api/generate",
        {"model": "tiny", "prompt": "x", "options": {"num_predict": 10**12}},
        400,
        "num_predict",
    ),
    "NaN temperature": (
        "/api/generate",
        b'{"model": "tiny", "prompt": "x", "options": {"temperature": NaN}}',
        400,
        "temperature",
    ),
    "infinite temperature": (
        "/v1/chat/completions",
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": Infinity}',
        400,
        "temperature",
    ),
    "top_k -1": ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"top_k": -1}}, 400, "top_k"),
    "n 10^9": ("/v1/chat/completions", {**CHAT, "n": 10**9}, 400, "n=1000000000"),
    "top_logprobs 10^9": (
        "/v1/chat/completions",
        {**CHAT, "logprobs": True, "top_logprobs": 10**9},
        400,
        "top_logprobs",
    ),
    "seed 2^70": ("/v1/completions", {"model": "tiny", "prompt": "x", "seed": 2**70}, 400, "seed"),
    "an unknown model": ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "not found"),
    "a name with traversal": ("/api/show", {"model": "../../../etc/passwd"}, 400, "name"),
    "a file path as a model": ("/api/generate", {"model": "/etc/x.gguf", "prompt": "x"}, 400, "looks like a path"),
    "a request-supplied chat template": (
        "/api/generate",
        {"model": "tiny", "prompt": "x", "template": "{{.}}"},
        400,
        "templates are refused",
    ),
    "a prompt longer than the context": ("/api/generate", {"model": "tiny", "prompt": "TOO-LONG"}, 400, "shorten it"),
    "a 50 MB body": ("/api/generate", b"{" + b" " * BIG + b"}", 413, "limit"),
    "a 10 MB Anthropic system prompt": ("/v1/messages", b'{"model": "tiny", "max_tokens": 4, "system": "'
                                        + b"x" * (10 * 2**20) + b'", "messages": []}', 413, "limit"),
    "an Anthropic max_tokens of 0": ("/v1/messages", {"model": "tiny", "max_tokens": 0, "messages": [
        {"role": "user", "content": "x"}]}, 400, "max_tokens"),
    "an Anthropic block of an unknown type": ("/v1/messages", {"model": "tiny", "max_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "hologram", "data": "x"}]}]}, 400, "hologram"),
    "an Anthropic tool schema that is not an object": ("/v1/messages", {"model": "tiny", "max_tokens": 4, "tools": [
        {"name": "f", "input_schema": {"type": "string"}}], "messages": [{"role": "user", "content": "x"}]},
        400, "input_schema"),
    "/infill with input_extra that is not text": ("/infill", {"model": "tiny", "input_prefix": "a", "input_suffix": "b",
                                                  "input_extra": [{"text": 5}]}, 400, "input_extra"),
    "a wrong content type": ("/api/generate", "text", 415, "must be JSON"),
    "an unknown route": ("/api/nothing", {}, 404, "no such route"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_clearly_and_the_server_keeps_serving(url: str, case: str) -> None:
    path, body, status, words = BAD[case]
    if body == "text":
        r = httpx.post(url + path, content=b"model=tiny", headers={"Content-Type": "text/plain"})
    elif isinstance(body, bytes):
        r = httpx.post(url + path, content=body, headers={"Content-Type": "application/json"}, timeout=60)
    else:
        r = httpx.post(url + path, json=body, timeout=60)
    assert r.status_code == status, r.text[:300]
    error = r.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert words in message, message
    assert "/tmp" not in message and "Traceback" not in message and "object at 0x" not in message
    ok = httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "fine", "stream": False})
    assert ok.status_code == 200 and ok.json()["done"] is True


def test_a_body_without_length_is_cut_at_the_limit(url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(100):  # 10 MB, over the default 8 MiB
            yield b"x" * 100_000

    r = httpx.post(url + "/api/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "x", "stream": False}).status_code == 200


def test_a_garbage_request_line_does_not_stop_the_server(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x00\x01\x02 GARBAGE\r\n\r\n")
        s.recv(1024)
    assert httpx.get(url + "/api/version").json()["version"]


def test_a_kept_response_is_its_keys_alone(keyed: tuple[str, dict[str, str]]) -> None:
    """Stateful Responses: one key's kept response is not found for another (not forbidden: nothing
    about it leaks), neither to read, nor to continue, nor to delete."""
    base, keys = keyed
    made = call(base, "POST", "/v1/responses", {"model": "tiny", "input": "x", "max_output_tokens": 2}, keys["user"])
    assert made.status_code == 200, made.text
    rid = made.json()["id"]
    assert call(base, "GET", f"/v1/responses/{rid}", None, keys["user"]).json()["id"] == rid
    for method, path, body in (("GET", f"/v1/responses/{rid}", None), ("DELETE", f"/v1/responses/{rid}", None),
                               ("POST", "/v1/responses", {"model": "tiny", "input": "y", "previous_response_id": rid})):
        other = call(base, method, path, body, keys["admin"])
        assert other.status_code == 404 and "not found" in other.json()["error"]["message"]
    assert call(base, "DELETE", f"/v1/responses/{rid}", None, keys["user"]).json()["deleted"] is True
    assert call(base, "GET", f"/v1/responses/{rid}", None, keys["user"]).status_code == 404


def test_kept_responses_expire_and_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept response past its 30 days is not found (and removed); an owner's oldest go past MAX_KEPT;
    a hostile id never names a path."""
    import os

    from edgeslm.errors import ResponseNotFoundError
    from edgeslm.serve.openai import kept

    store = kept.KeptResponses(tmp_path)
    ids = [f"resp_{i:032x}" for i in range(4)]
    monkeypatch.setattr(kept, "MAX_KEPT", 3)
    for n, rid in enumerate(ids):
        store.save("key-a", {"id": rid, "n": n})
        path = store._path("key-a", rid)
        os.utime(path, (1_000_000 + n, 1_000_000 + n))  # written in order, a second apart
    kept_now = [rid for rid in ids if store._path("key-a", rid).exists()]
    assert kept_now == ids[1:]  # the oldest went past the bound
    monkeypatch.setattr(kept, "TTL", 100 * 365 * 86400.0)  # the files' times are in 1970
    assert store.load("key-a", ids[3])["n"] == 3
    monkeypatch.setattr(kept, "TTL", 60.0)
    with pytest.raises(ResponseNotFoundError, match="expired"):
        store.load("key-a", ids[3])
    assert not store._path("key-a", ids[3]).exists()  # an expired one is removed when asked for
    for hostile in ("../../etc/passwd", "resp_" + "0" * 31 + "/", "resp_" + "g" * 32):
        with pytest.raises(ResponseNotFoundError):
            store.load("key-a", hostile)
    with pytest.raises(ResponseNotFoundError):
        store.load("key-b", ids[2])  # another owner's


def test_an_anthropic_event_holds_sse_breaking_tool_arguments_in_one_data_line() -> None:
    """Tool arguments a model wrote with blank lines, ``data:`` and ``event:`` in them cannot end the
    event or start another: they stay inside its one JSON data line."""
    from edgeslm.serve.anthropic.routes import event

    hostile = {"s": "\n\ndata: {\"type\": \"message_stop\"}\n\nevent: error\r\n\u2028x"}
    raw = event("content_block_delta", index=0, delta={"type": "input_json_delta",
                                                      "partial_json": json.dumps(hostile, ensure_ascii=False)})
    text = raw.decode()
    assert text.endswith("\n\n") and text.count("\n\n") == 1 and "\r" not in text
    kind, data = text.rstrip("\n").split("\n")
    assert kind == "event: content_block_delta" and data.startswith("data: ")
    assert json.loads(json.loads(data[6:])["delta"]["partial_json"]) == hostile
