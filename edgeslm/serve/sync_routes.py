"""Routes another edgeslm pushes to and pulls from (``edgeslm push/pull/sync``), after Ollama's
registry protocol: the manifests, each blob by digest, resumable uploads, one publish.

    GET  /edgeslm/v1/manifests          every stored manifest (fetch: user or admin)
    HEAD /edgeslm/v1/blobs/<digest>     200 and its size when stored (fetch)
    GET  /edgeslm/v1/blobs/<digest>     its bytes; 'Range: bytes=N-' resumes (fetch)
    HEAD /edgeslm/v1/uploads/<digest>   200 when held; else 404 and 'Upload-Offset' (create: admin)
    POST /edgeslm/v1/uploads/<digest>   bytes from 'Upload-Offset' of 'Upload-Length' (create)
    POST /edgeslm/v1/publish            {"manifests": [...], "force": false}: name them (create)

An upload is appended only at the offset the server holds (else 409 and the right offset), is
hashed whole once complete and kept only if it has its digest; ``publish`` checks every manifest
and that every blob it names has arrived before anything is named.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from ..errors import InvalidModelFileError, InvalidParameterError
from ..store.incoming import publish_received
from ..store.records import Manifest
from ..store.uploads import Partial, find_file, parse_digest, partial_offset
from .bodies import body_chunks
from .state import note, state

router = APIRouter()
MAX_MANIFESTS = 1000


@router.get("/edgeslm/v1/manifests")
async def manifests(request: Request) -> Response:
    found = await asyncio.to_thread(state(request).store().manifests)
    return JSONResponse({"manifests": [json.loads(m.to_json()) for m in found]})


@router.head("/edgeslm/v1/blobs/{digest}")
@router.get("/edgeslm/v1/blobs/{digest}")
async def blob(request: Request, digest: str) -> Response:
    wanted = parse_digest(digest)
    path = state(request).store().blob_path(wanted)
    if not await asyncio.to_thread(path.is_file):
        return JSONResponse({"error": f"{wanted} is not stored here"}, status_code=404)
    note(request, model=wanted)
    return FileResponse(path, media_type="application/octet-stream")


@router.head("/edgeslm/v1/uploads/{digest}")
async def upload_state(request: Request, digest: str) -> Response:
    wanted = parse_digest(digest)
    store = state(request).store()
    if await asyncio.to_thread(find_file, store, wanted):
        return Response(status_code=200)
    offset = await asyncio.to_thread(partial_offset, store, wanted)
    return Response(status_code=404, headers={"Upload-Offset": str(offset)})


def _header_int(request: Request, name: str, default: int | None = None) -> int:
    text = request.headers.get(name)
    if text is None and default is not None:
        return default
    if text is None or not text.isdigit() or len(text) > 18:
        raise InvalidParameterError(f"give '{name}' as a number of bytes (it is {str(text)[:40]!r})")
    return int(text)


@router.post("/edgeslm/v1/uploads/{digest}")
async def upload(request: Request, digest: str) -> Response:
    """Append the body at ``Upload-Offset``; 201 once the file is whole and checked, else 202."""
    wanted = parse_digest(digest)
    offset, total = _header_int(request, "Upload-Offset", 0), _header_int(request, "Upload-Length")
    store = state(request).store()
    if await asyncio.to_thread(find_file, store, wanted):
        return Response(status_code=201)
    note(request, model=wanted)
    part = await asyncio.to_thread(Partial, store, wanted, total)
    try:
        if part.offset != offset:
            return JSONResponse({"error": f"this server holds {part.offset} bytes of {wanted}; send from there"},
                                status_code=409, headers={"Upload-Offset": str(part.offset)})
        await _receive(request, part)
        if not part.complete:
            return Response(status_code=202, headers={"Upload-Offset": str(part.offset)})
        await asyncio.to_thread(part.finish)
    finally:
        part.close()
    return Response(status_code=201)


async def _receive(request: Request, part: Partial) -> None:
    """Write what arrives; what arrived before a cut stays for the next try."""
    async for chunk in body_chunks(request, resumable=True):
        await asyncio.to_thread(part.write, chunk)


@router.post("/edgeslm/v1/publish")
async def publish(request: Request) -> Response:
    body = await request.body()
    wanted, force = parse_publish(body)
    note(request, model=", ".join(str(m.name) for m in wanted)[:256])
    named = await asyncio.to_thread(publish_received, state(request).store(), wanted, force)
    return JSONResponse({"published": named, "unchanged": [str(m.name) for m in wanted if str(m.name) not in named]})


def parse_publish(body: bytes) -> tuple[list[Manifest], bool]:
    try:
        data: Any = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidParameterError("the body is not valid JSON") from None
    raw = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_MANIFESTS:
        raise InvalidParameterError(f"give 'manifests': a list of 1 to {MAX_MANIFESTS} manifests")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Manifest.from_json(json.dumps(item).encode()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidModelFileError(f"manifest {i} is not valid: {str(exc)[:200]}") from None
    return out, data.get("force") is True
