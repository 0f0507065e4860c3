"""Ollama's store verbs: show, pull (streamed progress), create (copy or quantize, with a system
prompt and parameters), copy and delete. Work that needs native code runs in a child process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidParameterError, RunnerTimeoutError
from ..pull import pull
from ..runner.tasks import QUANTIZE_TIMEOUT, quantize_in_child
from ..show import show_model
from ..store import parse_name
from .ollama_api import details, ndjson
from .ollama_schemas import CopyRequest, CreateRequest, ModelRequest, Options
from .service import chat_template, note, parse, state

router = APIRouter()
PARAMETER_KEYS = set(Options.model_fields)
PROGRESS_SILENCE = QUANTIZE_TIMEOUT + 60.0  # seconds a pull or create may go without a progress line


@router.post("/api/show")
async def show(request: Request) -> Response:
    body = await parse(request, ModelRequest)
    st = state(request)
    manifest = st.manifest(body.target)
    note(request, model=str(manifest.name))
    report = await asyncio.to_thread(show_model, st.store(), str(manifest.name))
    template = await asyncio.to_thread(chat_template, manifest, report.path)
    defaults = manifest.defaults
    params = defaults.get("parameters") or {}
    parameters = "\n".join(f"{k} {json.dumps(v)}" for k, v in params.items())
    info = {k: v for k, v in report.metadata.items() if not (isinstance(v, str) and v.startswith("["))}
    if not body.verbose:
        info = {k: v for k, v in info.items() if not k.startswith("tokenizer.")}
    modelfile = f"FROM {manifest.name}\n" + (f'SYSTEM """{defaults["system"]}"""\n' if defaults.get("system") else "")
    return JSONResponse({
        "modelfile": modelfile + "".join(f"PARAMETER {line}\n" for line in parameters.splitlines()),
        "parameters": parameters, "template": template if isinstance(template, str) else "",
        "system": defaults.get("system", ""), "details": details(manifest), "model_info": info,
        "capabilities": ["completion"], "modified_at": manifest.created,
    })  # fmt: skip


async def _progress(work: Callable[[Callable[[dict[str, Any]], None]], None]) -> AsyncIterator[dict[str, Any]]:
    """Run ``work(report)`` in a thread; yield what it reports as it happens, then its error if any."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

    def report(line: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, line)

    def run() -> None:
        try:
            work(report)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except BaseException as exc:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)

    worker = asyncio.create_task(asyncio.to_thread(run))
    while True:
        # The work says when it ends; each silence is bounded all the same. Its longest silent step
        # is a quantize in a child with run_child's deadline (QUANTIZE_TIMEOUT), hub downloads time
        # out per read, the rest is local copying; a client that leaves cancels this.
        try:
            item = await asyncio.wait_for(queue.get(), PROGRESS_SILENCE)
        except asyncio.TimeoutError:
            raise RunnerTimeoutError(
                f"the model operation said nothing for {PROGRESS_SILENCE:g} s and was abandoned; retry it"
            ) from None
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        yield item
    await worker


async def _respond(request: Request, lines: AsyncIterator[dict[str, Any]], stream: bool) -> Response:
    if stream:
        return ndjson(lines)
    last: dict[str, Any] = {}
    async for line in lines:
        last = line
    return JSONResponse(last)


@router.post("/api/pull")
async def pull_model(request: Request) -> Response:
    body = await parse(request, ModelRequest)
    st = state(request)
    reference = body.target
    note(request, model=reference)

    def work(report: Callable[[dict[str, Any]], None]) -> None:
        report({"status": "pulling manifest"})
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            report({"status": "pulling model", "completed": done[0]})

        result = pull(st.store(), reference, st.settings, progress=progress, show_hub_progress=False)
        digest = result.manifest.digest.replace("-", ":")
        report({"status": f"pulling {digest[7:19]}", "digest": digest, "total": result.manifest.size,
                "completed": result.manifest.size})  # fmt: skip
        report({"status": "verifying sha256 digest"})
        report({"status": "writing manifest"})
        report({"status": "success"})

    return await _respond(request, _progress(work), body.stream)


@router.post("/api/create")
async def create(request: Request) -> Response:
    body = await parse(request, CreateRequest)
    st = state(request)
    note(request, model=body.model)
    if body.template:
        raise InvalidParameterError("request-supplied chat templates are refused; the source model's template is kept")
    if body.files or body.adapters:
        raise InvalidParameterError(
            "creating from uploaded files or adapters is not supported; 'edgeslm import FILE' stores a GGUF file"
        )
    if body.messages:
        raise InvalidParameterError("stored example messages are not supported; send them with each chat")
    if not body.from_:
        raise InvalidParameterError("'from' is required: the stored model to create this one from")
    unknown = sorted(set(body.parameters or {}) - PARAMETER_KEYS)
    if unknown:
        valid = ", ".join(sorted(PARAMETER_KEYS))
        raise InvalidParameterError(f"unknown parameter(s) {', '.join(unknown)[:200]}; valid: {valid}")
    Options.model_validate(body.parameters or {})
    source, target = st.manifest(body.from_), parse_name(body.model)

    def work(report: Callable[[dict[str, Any]], None]) -> None:
        store = st.store()
        if body.quantize:
            report({"status": f"quantizing {source.info.file_type or 'the'} model to {body.quantize.upper()}"})
            quantize_in_child(st.settings.home, str(source.name), str(target), body.quantize)
        else:
            report({"status": "using existing layers"})
            store.copy(source.name, target)
        defaults = {k: v for k, v in (("system", body.system), ("parameters", body.parameters)) if v}
        if defaults:
            report({"status": "writing system prompt and parameters"})
            store.set_defaults(target, {**source.defaults, **defaults})
        report({"status": "writing manifest"})
        report({"status": "success"})

    return await _respond(request, _progress(work), body.stream)


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    body = await parse(request, CopyRequest)
    st = state(request)
    source = st.manifest(body.source)
    note(request, model=str(source.name))
    await asyncio.to_thread(st.store().copy, source.name, parse_name(body.destination))
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    body = await parse(request, ModelRequest)
    st = state(request)
    manifest = st.manifest(body.target)
    note(request, model=str(manifest.name))
    store = st.store()
    st.manager.unload(str(manifest.name))
    await asyncio.to_thread(lambda: store.execute_remove(store.plan_remove([manifest.name])))
    return Response(status_code=200)
