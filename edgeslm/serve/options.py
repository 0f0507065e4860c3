"""The server's options and their defaults: light, so that the CLI can build its parser without
importing the server (FastAPI, the manager)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_KEEP_ALIVE, DEFAULT_MODEL, DEFAULT_PORT
from ..engines.base import Tuning
from ..errors import UsageError
from ..formats.kv_cache import KVCache
from ..runner import LOAD_TIMEOUT
from ..speculation import LookupConfig
from .limits import MAX_BODY

__all__ = ["DEFAULT_KEEP_ALIVE", "DEFAULT_PORT", "ServeOptions", "check_options"]


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_keys: Path | None = None
    audit_log: Path | None = None
    audit_prompts: bool = False
    parallel: int = 4
    ctx: int = 2048  # tokens per slot
    max_loaded: int = 3
    memory: int | None = None  # bytes for loaded models; None: MEMORY_SHARE of the machine's
    queue: int = 32
    keep_alive: float = DEFAULT_KEEP_ALIVE
    threads: int | None = None
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_body: int = MAX_BODY
    preload: str | None = DEFAULT_MODEL
    pin: tuple[str, ...] = ()  # models loaded at start and kept loaded (never expired or evicted)
    prompt_cache: bool = True
    load_timeout: float = LOAD_TIMEOUT  # seconds a model may take to load before its runner is killed
    # prompt-lookup speculative decoding of greedy requests: (model name, or "*" for every model; its config)
    draft: tuple[tuple[str, LookupConfig], ...] = ()
    kv: tuple[tuple[str, KVCache], ...] = ()  # KV cache type: (model name, or "*" for every llama.cpp model; type)
    tuning: Tuning = Tuning()  # llama.cpp's micro-batch, flash attention, mmap (tune's, or flags; None: its own)
    deterministic: bool = False  # every request decoded alone (a request can ask for it: "deterministic": true)

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


def check_options(options: ServeOptions) -> None:
    if options.api_keys is None and not options.loopback:
        raise UsageError(
            f"without api_keys the server listens on loopback only; to listen on {options.host}, "
            "create keys with 'edgeslm keys add FILE --id NAME --role user' and pass that FILE as api_keys",
            params="api_keys",
        )
    if any(not isinstance(config, LookupConfig) for _, config in options.draft):
        raise UsageError("draft: a (model name or '*', LookupConfig) pair per entry", params="draft")
    if not 1 <= options.parallel <= 256:
        raise UsageError(f"parallel {options.parallel} is out of range; valid: 1 to 256", params="parallel")
    if not 64 <= options.ctx <= 1 << 20:
        raise UsageError(f"ctx {options.ctx} is out of range; valid: 64 to 1,048,576 tokens per slot", params="ctx")
    if not 1 <= options.load_timeout <= 86_400:
        raise UsageError(
            f"load_timeout {options.load_timeout:g} is out of range; valid: 1 to 86,400 seconds", params="load_timeout"
        )
    if options.queue < 0 or options.max_loaded < 1:
        raise UsageError("queue must be 0 or more and max_loaded 1 or more", params=("queue", "max_loaded"))
