"""The server's state, and what a request learns about its model once: ``resolve`` looks the
model up (one manifest read; a builtin pulled off the event loop), and the tool format, the stored
defaults and the runner all take that result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request

from ..access.audit import AuditLog
from ..access.keys import KeyRing
from ..config import Settings
from ..errors import ModelNotFoundError
from ..runner.manager import ModelManager
from ..store import Store, parse_name
from ..store.records import Manifest
from ..store.resolve import ResolvedModel, chat_template
from ..tools.native import ToolFormat
from ..tools.native import detect as detect_tool_format
from ..tools.plan import ToolPlan, plan_tools, uses_tools
from .metrics import Metrics


@dataclass
class ServerState:
    settings: Settings
    manager: ModelManager
    metrics: Metrics
    keys: KeyRing | None = None
    audit: AuditLog | None = None
    audit_prompts: bool = False
    deterministic: bool = False  # every request decoded alone (serve --deterministic)
    started: float = field(default_factory=time.time)
    _store: Store | None = None
    _tool_formats: dict[str, ToolFormat] = field(default_factory=dict)  # by the weights and template they come from

    def store(self) -> Store:
        """The store, opened (and swept) once; its manifests are read fresh on every lookup."""
        if self._store is None:
            from ..store.uploads import sweep_uploads

            self._store = self.manager.store  # the manager's, opened once: not a second open and sweep
            sweep_uploads(self._store)  # uploads no create used within a day
        return self._store

    def manifest(self, name: str) -> Manifest:
        """A stored model, for requests that describe one (show, a model's entry): they never pull. A
        request that runs one (generate, chat, embed, tokenize) pulls a builtin from its installed package
        on first use (``resolve``); the not-found message says so."""
        wanted = parse_name(name)
        manifest = self.store().find(wanted)
        if manifest is None:
            from ..sources.builtin import BUILTINS

            hint = ("; it is a builtin, pulled from its installed package by the first request that runs it (or "
                    "'POST /api/pull')" if wanted.base in BUILTINS else "")
            raise ModelNotFoundError(f"model '{name}' not found{hint}; 'GET /api/tags' lists the models this "
                                     "server has")
        return manifest

    async def tool_format(self, model: ResolvedModel) -> ToolFormat:
        """The tool format of the model's chat template (read once per model)."""
        key = model.key + "|" + str(model.defaults.get("template") or "")
        if key not in self._tool_formats:
            self._tool_formats[key] = detect_tool_format(await asyncio.to_thread(chat_template, model))
        return self._tool_formats[key]


async def resolve(request: Request, name: str) -> ResolvedModel:
    """The request's model, looked up once (a builtin pulled on first use, off the event loop);
    everything after this (tools, stored defaults, the runner) takes the result."""
    found = await asyncio.to_thread(state(request).manager.resolve, name)
    note(request, model=found.name)
    return found


def state(request: Request) -> ServerState:
    st: ServerState = request.app.state.edgeslm
    return st


def note(request: Request, **fields: Any) -> None:
    """Facts for this request's audit line (model, tokens, prompt)."""
    request.scope.setdefault("state", {}).setdefault("audit", {}).update(fields)


async def plan_for(request: Request, name: str, messages: Sequence[Mapping[str, Any]], tools: Any, choice: Any,
                   parallel: bool | None, *, has_format: bool) -> tuple[ToolPlan, ResolvedModel]:
    """The request's plan, checked before the model is looked at; then the model, resolved once
    for the whole request, and its own tool format."""
    plan = plan_tools(tools, choice, parallel, has_format=has_format)
    model = await resolve(request, name)
    model.info.check_generates(model.name)
    if not uses_tools(tools, messages):
        return plan, model
    return replace(plan, fmt=await state(request).tool_format(model)), model
