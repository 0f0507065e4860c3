"""Configuration, resolved once: flag > environment variable > default.

Every setting edgeslm reads from the environment is listed here and nowhere else
(``huggingface_hub/constants.py`` is the model). Code takes a ``Settings`` object; it never
reads ``os.environ`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "edgeslm"
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_CONTEXT = 4096  # tokens a model loads with when neither it nor the user says less
DEFAULT_PORT = 8434  # the server's; not Ollama's 11434: both can run side by side
DEFAULT_KEEP_ALIVE = 300.0  # seconds an idle model stays loaded (Ollama's 5 minutes)

ENV_HOME = "EDGESLM_HOME"
ENV_OFFLINE = "EDGESLM_OFFLINE"
ENV_ENGINE = "EDGESLM_ENGINE"
ENV_KV_TYPE = "EDGESLM_KV_CACHE_TYPE"  # as Ollama's OLLAMA_KV_CACHE_TYPE
DEFAULT_ENGINE = "llama.cpp"
ENV_HF_ENDPOINT = "HF_ENDPOINT"
ENV_HF_TOKEN = "HF_TOKEN"
ENV_HF_OFFLINE = "HF_HUB_OFFLINE"
ENV_HOST = "EDGESLM_HOST"  # where 'edgeslm ps' finds the server: HOST:PORT or a URL
ENV_API_KEY = "EDGESLM_API_KEY"  # the key 'edgeslm ps' sends
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
ENV_FETCH_TIMEOUT = "EDGESLM_FETCH_TIMEOUT"  # seconds a download may stay silent before its source is given up
DEFAULT_FETCH_TIMEOUT = 30.0
ENV_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Everything edgeslm reads from outside its arguments."""

    home: Path
    offline: bool = False
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    hf_token: str | None = None
    uses_proxy: bool = False  # network access goes through a proxy (set in the environment)
    engine: str = DEFAULT_ENGINE  # the registered engine that runs models
    server: str = DEFAULT_SERVER  # a running 'edgeslm serve', for 'edgeslm ps'
    api_key: str | None = None
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    kv_type: str | None = None  # EDGESLM_KV_CACHE_TYPE: llama.cpp's KV cache type when a load names none

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def resolve_settings(
    *,
    home: str | Path | None = None,
    offline: bool | None = None,
    hf_endpoint: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings once: explicit arguments (CLI flags) win over ``env``, which wins over defaults."""
    env = os.environ if env is None else env
    if home is None:
        home = env.get(ENV_HOME) or platformdirs.user_data_dir(APP_NAME, appauthor=False)
    if offline is None:
        offline = _is_true(env.get(ENV_OFFLINE)) or _is_true(env.get(ENV_HF_OFFLINE))
    if hf_endpoint is None:
        hf_endpoint = env.get(ENV_HF_ENDPOINT) or DEFAULT_HF_ENDPOINT
    return Settings(
        home=Path(home).expanduser().absolute(),
        offline=offline,
        hf_endpoint=hf_endpoint.rstrip("/"),
        hf_token=env.get(ENV_HF_TOKEN) or None,
        uses_proxy=any(env.get(name) for name in ENV_PROXIES),
        engine=env.get(ENV_ENGINE) or DEFAULT_ENGINE,
        server=env.get(ENV_HOST) or DEFAULT_SERVER,
        api_key=env.get(ENV_API_KEY) or None,
        fetch_timeout=_positive_float(env, ENV_FETCH_TIMEOUT, DEFAULT_FETCH_TIMEOUT),
        kv_type=env.get(ENV_KV_TYPE) or None,
    )


def _positive_float(env: Mapping[str, str], key: str, default: float) -> float:
    text = env.get(key)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86_400:
        from .errors import UsageError

        raise UsageError(f"{key}={text!r} must be a number of seconds between 0 and 86400")
    return value
