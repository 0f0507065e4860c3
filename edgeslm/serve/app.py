"""``edgeslm serve``: the FastAPI app, its options, and the order every request passes through.

    Guard (Host, Origin, body limits, keys and roles; audit line, counter, access log)
      -> CORS (allow-list) -> FastAPI (Ollama router, OpenAI router, /metrics, the web page /ui/)

Errors are answered in one place (``http_errors``), in the dialect of the path. The HTTP process
never loads native code: models run in runners (``runner``), store work that needs llama.cpp in
a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from ..access.audit import AuditLog
from ..access.keys import load_keys
from ..config import Settings
from ..device import system_ram
from ..errors import EdgeslmError
from ..runner.manager import ManagerParams, ModelManager, RunnerFactory
from .guard import Guard, GuardOptions, origins
from .http_errors import error_response, exception_response
from .metrics import Metrics
from .options import ServeOptions, check_options
from .replies import ClientGone
from .state import ServerState

log = logging.getLogger(__name__)
EXPIRY_INTERVAL = 5.0
MEMORY_SHARE = 0.75  # of the machine's memory, for loaded models, unless --max-memory says otherwise


def create_app(options: ServeOptions, settings: Settings, factory: RunnerFactory | None = None) -> Any:
    """The ASGI app to serve (``Guard`` around FastAPI); ``factory`` makes runners (tests: fakes)."""
    check_options(options)
    budget = options.memory if options.memory is not None else int(system_ram() * MEMORY_SHARE)
    params = ManagerParams(
        options.max_loaded, budget, options.parallel, options.ctx, options.threads, options.queue, options.keep_alive,
        options.prompt_cache, options.load_timeout, options.pin, options.draft, options.kv, options.tuning,
    )
    manager = ModelManager(settings, params, factory)
    keys = load_keys(options.api_keys) if options.api_keys else None
    st = ServerState(settings, manager, Metrics(manager), keys, None, options.audit_prompts,
                     deterministic=options.deterministic)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st.audit = AuditLog(options.audit_log) if options.audit_log else None
        expiry = asyncio.create_task(_expire_loop(manager))
        for name in options.pin:
            await _preload(manager, name, -1)
        if options.preload and options.preload not in options.pin:
            await _preload(manager, options.preload, options.keep_alive)
        try:
            yield
        finally:
            expiry.cancel()
            await asyncio.to_thread(manager.close)
            if st.audit is not None:
                st.audit.close()

    app = FastAPI(title="edgeslm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.edgeslm = st
    _routes(app)
    cors = CORSMiddleware(
        app,
        allow_origins=list(origins(options.cors_origins)),
        allow_credentials="*" not in options.cors_origins,  # never '*' with credentials
        allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    )
    guard_options = GuardOptions(
        loopback_only=options.loopback,
        allowed_hosts=frozenset(h.lower() for h in options.allowed_hosts),
        cors_origins=origins(options.cors_origins),
        max_body=options.max_body,
    )
    return Guard(cors, st, guard_options)


def _routes(app: FastAPI) -> None:
    from . import sync_routes
    from .anthropic import routes as anthropic_api
    from .llamacpp import routes as llamacpp_api
    from .ollama import admin as ollama_admin
    from .ollama import routes as ollama_api
    from .openai import responses as responses_api
    from .openai import routes as openai_api
    from .ui import routes as ui

    app.include_router(ollama_api.router)
    app.include_router(ollama_admin.router)
    app.include_router(openai_api.router)
    app.include_router(responses_api.router)
    app.include_router(llamacpp_api.router)
    app.include_router(anthropic_api.router)
    app.include_router(ui.router)
    app.include_router(sync_routes.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, kind = request.app.state.edgeslm.metrics.render()
        return Response(body, media_type=kind)

    @app.exception_handler(EdgeslmError)
    async def on_error(request: Request, exc: EdgeslmError) -> Response:
        return exception_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request.url.path, 400, "invalid request parameters")

    @app.exception_handler(ClientGone)
    async def on_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path[:200])
        return error_response(request.url.path, 500, "internal error; the server log has the details")

    @app.exception_handler(404)
    async def on_missing(request: Request, exc: Exception) -> Response:
        return error_response(request.url.path, 404, "no such route; see the Ollama and OpenAI API documentation")

    @app.exception_handler(405)
    async def on_method(request: Request, exc: Exception) -> Response:
        return error_response(request.url.path, 405, f"method {request.method} is not allowed on this route")


async def _expire_loop(manager: ModelManager) -> None:
    while True:
        await asyncio.sleep(EXPIRY_INTERVAL)
        for name in await asyncio.to_thread(manager.expire):
            log.info("unloaded %s (keep_alive passed)", name)


async def _preload(manager: ModelManager, name: str, keep_alive: float) -> None:
    try:
        manager.release(await asyncio.to_thread(manager.acquire, name, keep_alive))
        log.info("%s is loaded", name)
    except EdgeslmError as exc:
        log.warning("could not preload %s: %s", name, exc)
