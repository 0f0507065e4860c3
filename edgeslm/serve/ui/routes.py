"""The web page: its files under ``/ui/`` and the read-only views it draws from ``/edgeslm/v1/``.

The files are read once from the package (``web/``) into a table; a path not in that table is
a 404, so no request names a file on disk. The page's writes (pull, copy, delete, unload, chat)
use the Ollama API as any client does, with the key the person gave; the Guard checks each.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ...access.audit import report
from ...access.compliance import report_csv, report_rows
from ...access.keys import ROLES, Action
from ...version import __version__
from ..http_errors import error_response
from ..state import state
from .views import audit_view, models_view, server_view

router = APIRouter()
TYPES = {
    ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
}


@functools.cache
def assets() -> dict[str, tuple[bytes, str, str]]:
    """Every file of the page by its path under /ui/: (bytes, content type, ETag)."""
    out: dict[str, tuple[bytes, str, str]] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif (kind := TYPES.get("." + entry.name.rsplit(".", 1)[-1])) is not None:
                body = entry.read_bytes()
                out[prefix + entry.name] = (body, kind, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    walk(files("edgeslm.serve.ui") / "web", "")
    return out


@router.get("/ui")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/auth")
async def ui_auth(request: Request) -> JSONResponse:
    """Whether the page must ask for a key (public, as a 401 would tell the same)."""
    return JSONResponse({"auth": state(request).keys is not None})


@router.get("/ui/{path:path}")
async def ui_file(request: Request, path: str) -> Response:
    found = assets().get(path or "index.html")
    if found is None:
        return error_response(request.url.path, 404, f"the web page has no file '{path[:100]}'; open /ui/")
    body, kind, etag = found
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=kind, headers=headers)


@router.get("/edgeslm/v1/session")
async def session(request: Request) -> JSONResponse:
    """Who the caller is and what it may do: the page shows only the controls its role allows."""
    st = state(request)
    key = request.scope["state"].get("key")
    actions = sorted(a.value for a in (ROLES[key.role] if key else Action))
    params = st.manager.params
    return JSONResponse({
        "version": __version__, "auth": st.keys is not None, "key_id": key.id if key else None,
        "role": key.role if key else None, "actions": actions, "audit": st.audit is not None,
        "server": {"parallel": params.slots, "ctx": params.ctx_per_slot, "keep_alive": params.keep_alive},
    })


@router.get("/edgeslm/v1/models")
async def models(request: Request) -> JSONResponse:
    return JSONResponse(await asyncio.to_thread(models_view, state(request).store()))


@router.get("/edgeslm/v1/server")
async def server(request: Request, minutes: float = Query(10.0, ge=1, le=15)) -> JSONResponse:
    st = state(request)
    loaded = await asyncio.to_thread(st.manager.ps)
    return JSONResponse(server_view(loaded, st.metrics.activity.series(minutes), st.started))


@router.get("/edgeslm/v1/audit")
async def audit(request: Request, limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
    st = state(request)
    if st.audit is None:
        return JSONResponse({"enabled": False})
    view = await asyncio.to_thread(audit_view, st.audit.path, limit)
    return JSONResponse({"enabled": True, **view})


@router.get("/edgeslm/v1/audit.csv")
async def audit_csv(request: Request) -> Response:
    log = state(request).audit
    if log is None:
        return error_response(request.url.path, 404, "this server keeps no audit log; start it with --audit-log FILE")
    path = log.path
    rows = await asyncio.to_thread(lambda: report_rows(report(path)))
    return Response(
        report_csv(rows), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="edgeslm-audit-report.csv"'},
    )
