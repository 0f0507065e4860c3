"""Ollama's store verbs: show, pull (streamed progress), create (copy or quantize, with a system
prompt and parameters), copy and delete. Work that needs native code runs in a child process."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...errors import InvalidParameterError, RunnerTimeoutError
from ...formats.fim import has_fim
from ...formats.gguf_header import read_gguf_header
from ...formats.model_format import ModelFormat
from ...modelfile import CreateSpec, create_model, modelfile_of, spec_from_modelfile
from ...modelfile import parse as parse_modelfile
from ...modelfile.create import checked_defaults
from ...pull import pull
from ...runner.tasks import QUANTIZE_TIMEOUT, quantize_in_child
from ...show import show_model
from ...store import Store, parse_name
from ...store.atomic import TempDir
from ...store.records import Manifest
from ...store.resolve import chat_template, from_manifest
from ...store.uploads import Upload, find_file, parse_digest
from ..bodies import body_chunks, parse
from ..state import note, state
from .routes import capabilities, details, ndjson
from .schemas import CopyRequest, CreateRequest, ModelRequest

router = APIRouter()
PROGRESS_SILENCE = QUANTIZE_TIMEOUT + 60.0  # seconds a pull or create may go without a progress line


@router.post("/api/show")
async def show(request: Request) -> Response:
    body = await parse(request, ModelRequest)
    st = state(request)
    manifest = st.manifest(body.target)
    note(request, model=str(manifest.name))
    report = await asyncio.to_thread(show_model, st.store(), str(manifest.name))
    template = await asyncio.to_thread(chat_template, from_manifest(st.store(), manifest))
    defaults = manifest.defaults
    params = defaults.get("parameters") or {}
    parameters = "\n".join(f"{k} {json.dumps(v)}" for k, v in params.items())
    info = {k: v for k, v in report.metadata.items() if not (isinstance(v, str) and v.startswith("["))}
    if not body.verbose:
        info = {k: v for k, v in info.items() if not k.startswith("tokenizer.")}
    trained = manifest.info.context_length
    served = min(trained or st.manager.params.ctx_per_slot, st.manager.params.ctx_per_slot)
    # the context a request gets here, where clients look for it; the trained one beside it
    info = {**info, f"{manifest.info.architecture}.context_length": served, "edgeslm.trained_context_length": trained}
    fim = await asyncio.to_thread(_takes_fim, st.store(), manifest)
    can = capabilities(manifest, template, fim)  # from the chat template the model renders with, its FIM tokens
    template = defaults.get("template_source") or template
    return JSONResponse({
        "modelfile": modelfile_of(st.store(), manifest),
        "parameters": parameters, "template": template if isinstance(template, str) else "",
        "system": defaults.get("system", ""), "license": "\n".join(defaults.get("license") or []),
        "messages": list(defaults.get("messages") or []), "details": details(manifest), "model_info": info,
        "capabilities": can, "modified_at": manifest.created,
        "adapters": [{"digest": a.digest.replace("-", ":"), "scale": a.scale, "name": a.label}
                     for a in manifest.adapters],
    })


def _takes_fim(store: Store, manifest: Manifest) -> bool:
    """Whether llama.cpp finds fill-in-the-middle tokens in the model's GGUF (the runner builds FIM
    prompts on llama.cpp only)."""
    if manifest.format is not ModelFormat.GGUF:
        return False
    return has_fim(read_gguf_header(store.model_path(manifest)))


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
                "completed": result.manifest.size})
        report({"status": "verifying sha256 digest"})
        report({"status": "writing manifest"})
        report({"status": "success"})

    return await _respond(request, _progress(work), body.stream)


@router.post("/api/create")
async def create(request: Request) -> Response:
    body = await parse(request, CreateRequest)
    st = state(request)
    note(request, model=body.model)
    target = parse_name(body.model)
    folder = TempDir(st.store().tmp_dir, "peft") if _is_peft(body.adapters) else None
    try:
        spec = create_spec(st.store(), body, folder.path if folder else None)
        await asyncio.to_thread(checked_defaults, spec)  # a bad parameter, message or template: a 400 at once
    except BaseException:
        if folder:
            folder.discard()
        raise

    def work(report: Callable[[dict[str, Any]], None]) -> None:
        def say(status: str) -> None:
            report({"status": status})

        def in_child(store: Store, source: str, dest: str, qtype: str) -> None:
            quantize_in_child(st.settings.home, source, dest, qtype)  # native work stays out of the server

        try:
            create_model(st.store(), target, spec, st.settings, quantize=body.quantize, report=say, quantizer=in_child)
        finally:
            if folder:
                folder.discard()
        say("success")

    return await _respond(request, _progress(work), body.stream)


PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors"}
PEFT = "peft-adapter"  # the name a request's PEFT files go by, as one ADAPTER


def _is_peft(adapters: dict[str, str] | None) -> bool:
    return bool(adapters) and any(Path(name).name in PEFT_FILES for name in adapters or {})


def create_spec(store: Store, body: CreateRequest, peft_folder: Path | None = None) -> CreateSpec:
    """The request as a CreateSpec: its Modelfile (FROM and ADAPTER may name stored models or the
    request's ``files`` and ``adapters``, never a path on this machine), then its fields over it.
    A PEFT adapter's files (``adapter_config.json``, ``adapter_model.safetensors``) are linked into
    ``peft_folder`` and go as one ADAPTER."""
    named = {**(body.files or {}), **(body.adapters or {})}
    files = {name: _blob(store, name, digest) for name, digest in named.items()}
    adapters = list(body.adapters or {})
    if peft_folder is not None:
        for name in adapters:
            if Path(name).name not in PEFT_FILES:
                raise InvalidParameterError(f"adapter file {name[:80]!r} beside a PEFT adapter's files; send one "
                                            "adapter: adapter_config.json and adapter_model.safetensors")
            os.symlink(files[name], peft_folder / Path(name).name)
        files[PEFT], adapters = peft_folder, [PEFT]
    if body.modelfile:
        spec = spec_from_modelfile(parse_modelfile(body.modelfile, "modelfile"), None, "modelfile")
    else:
        source = body.from_ or _only_model_file(body.files)
        if not source:
            raise InvalidParameterError("'from' (a stored model) or 'files' (a .gguf blob) is required")
        spec = CreateSpec(source=source, where="request")
    fields: dict[str, Any] = {"files": files}
    if body.from_:
        fields["source"] = body.from_
    if adapters:
        fields["adapters"] = tuple(spec.adapters) + tuple(adapters)
    if body.system is not None:
        fields["system"] = body.system
    if body.template is not None:
        fields["template"] = body.template
    if body.parameters:
        fields["parameters"] = {**spec.parameters, **body.parameters}
    if body.messages:
        fields["messages"] = tuple({"role": m.role, "content": m.content} for m in body.messages)
    if body.license:
        fields["license"] = (body.license,) if isinstance(body.license, str) else tuple(body.license)
    return replace(spec, **fields)


def _only_model_file(files: dict[str, str] | None) -> str | None:
    ggufs = [name for name in files or {} if name.endswith(".gguf")]
    if files and len(ggufs) != 1:
        raise InvalidParameterError("'files' must hold exactly one .gguf model file (folders of weights: 'edgeslm "
                                    "convert' on the server)")
    return ggufs[0] if ggufs else None


def _blob(store: Store, name: str, digest: str) -> Path:
    """A file this server holds (a blob of its models, or an upload), by Ollama's ``sha256:<hex>``."""
    path = find_file(store, parse_digest(digest))
    if path is None:
        raise InvalidParameterError(f"file {name[:80]!r}: {digest[:80]} is not on this server; upload it first "
                                    "(POST /api/blobs/sha256:<hex>, as 'ollama create' does)")
    return path


@router.head("/api/blobs/{digest}")
async def has_blob(request: Request, digest: str) -> Response:
    found = await asyncio.to_thread(find_file, state(request).store(), parse_digest(digest))
    return Response(status_code=200 if found else 404)


@router.post("/api/blobs/{digest}")
async def upload_blob(request: Request, digest: str) -> Response:
    """Receive a file's bytes, kept only if they hash to ``digest`` (Ollama answers 201)."""
    wanted = parse_digest(digest)
    store = state(request).store()
    upload = await asyncio.to_thread(Upload, store, wanted)
    try:
        async for chunk in body_chunks(request):
            await asyncio.to_thread(upload.write, chunk)
        await asyncio.to_thread(upload.finish)
    finally:
        upload.discard()
    note(request, model=wanted)
    return Response(status_code=201)


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
