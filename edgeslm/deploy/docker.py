"""``edgeslm deploy docker NAME… -o DIR``: a build context for an image that serves those models.

    DIR/Dockerfile            two stages: install the wheel (engine pinned) into a venv, then a slim
                              runtime, non-root, the models imported from the bundle at build time
    DIR/wheels/edgeslm-*.whl  this edgeslm (``wheel.build_wheel``)
    DIR/models.eslm           the models, sealed (``bundle create``); kept in the image at the path
                              the Kubernetes base imports from
    DIR/docker-entrypoint.sh  ``edgeslm serve``; refuses to listen beyond loopback without a key file
    DIR/compose.yaml          the key file as a secret, the store on a volume, read-only root
    DIR/keys.toml             key hashes (a secret at run time, never in the image: .dockerignore)
    DIR/.dockerignore

No image is built here; ``docker compose up --build`` in DIR does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..access.keys import add_key, load_keys
from ..bundle import create_bundle
from ..errors import InvalidParameterError
from ..store import ModelName, Store
from ..store.atomic import staged_folder
from ..version import __version__
from .k8s import BUNDLE, HOME, PORT, UID, to_yaml
from .wheel import build_wheel, wheel_name

KEYS_SECRET = "/run/secrets/edgeslm_keys"
VENV = "/opt/edgeslm/venv"
LLAMA_CPU_WHEELS = "https://abetlen.github.io/llama-cpp-python/whl/cpu"  # prebuilt CPU wheels of the engine
ENTRYPOINT = "docker-entrypoint.sh"


@dataclass(frozen=True)
class DockerParams:
    python: str = "3.11"
    parallel: int = 4
    ctx: int = 2048
    image: str = f"edgeslm-models:{__version__}"
    ray: bool = False  # also the extra edgeslm[ray]: an image for deploy ray --k8s

    def check(self) -> None:
        if self.python not in ("3.10", "3.11", "3.12", "3.13"):
            raise InvalidParameterError(f"--python {self.python!r}: give 3.10, 3.11, 3.12 or 3.13")
        if not 1 <= self.parallel <= 256 or not 64 <= self.ctx <= 1 << 20:
            raise InvalidParameterError("parallel 1-256 and ctx 64-1,048,576", params=("parallel", "ctx"))


def dockerfile(models: Sequence[str], params: DockerParams) -> str:
    wheel = wheel_name() + ("[ray]" if params.ray else "")
    check = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/healthz', timeout=4)"
    return f"""# syntax=docker/dockerfile:1
# edgeslm {__version__}: serves {", ".join(models)}
# Build and run: docker compose up --build   (the key file is a secret at run time, never in the image)
ARG PYTHON={params.python}

FROM python:${{PYTHON}}-slim AS build
# A C toolchain only for the case where the engine has no prebuilt wheel for this platform
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \\
    && rm -rf /var/lib/apt/lists/*
COPY wheels/ /tmp/wheels/
RUN python -m venv {VENV} \\
    && {VENV}/bin/pip install --no-cache-dir --extra-index-url {LLAMA_CPU_WHEELS} "/tmp/wheels/{wheel}"

FROM python:${{PYTHON}}-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \\
    && rm -rf /var/lib/apt/lists/* \\
    && groupadd --system --gid {UID} edgeslm \\
    && useradd --system --uid {UID} --gid {UID} --home-dir {HOME} --no-create-home edgeslm \\
    && mkdir -p {HOME} && chown {UID}:{UID} {HOME}
COPY --from=build {VENV} {VENV}
COPY models.eslm {BUNDLE}
COPY --chmod=0755 {ENTRYPOINT} /usr/local/bin/edgeslm-entrypoint
ENV PATH={VENV}/bin:$PATH HOME=/tmp EDGESLM_OFFLINE=1 HF_HUB_OFFLINE=1 \\
    EDGESLM_STORE={HOME} EDGESLM_API_KEYS={KEYS_SECRET} EDGESLM_PRELOAD={models[0]} \\
    EDGESLM_PARALLEL={params.parallel} EDGESLM_CTX={params.ctx}
USER {UID}:{UID}
# The models, checked digest by digest, into the image's store (a volume mounted there starts with them)
RUN edgeslm --home {HOME} bundle import {BUNDLE} && edgeslm --home {HOME} verify
EXPOSE {PORT}
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \\
    CMD ["python", "-c", "{check}"]
ENTRYPOINT ["/usr/local/bin/edgeslm-entrypoint"]
"""


ENTRYPOINT_SCRIPT = f"""#!/bin/sh
# edgeslm serve in a container. Beyond loopback it needs a key file (a secret: compose.yaml);
# without one it refuses to start rather than serve models to anyone who can reach the port.
set -eu
host="${{EDGESLM_HOST:-0.0.0.0}}"
keys="${{EDGESLM_API_KEYS:-{KEYS_SECRET}}}"
store="${{EDGESLM_STORE:-{HOME}}}"
set -- --home "$store" serve --host "$host" --port "${{EDGESLM_PORT:-{PORT}}}" \\
    --parallel "${{EDGESLM_PARALLEL:-4}}" --ctx "${{EDGESLM_CTX:-2048}}" \\
    --preload "${{EDGESLM_PRELOAD}}" --audit-log "${{EDGESLM_AUDIT_LOG:-$store/audit.jsonl}}" "$@"
if [ -f "$keys" ]; then
    exec edgeslm "$@" --api-keys "$keys"
fi
case "$host" in
    127.0.0.1|localhost|::1) exec edgeslm "$@" ;;
esac
echo "edgeslm: refusing to listen on $host without a key file: none at $keys." >&2
echo "Give one as the secret edgeslm_keys (compose.yaml; 'edgeslm keys add keys.toml --id ID --role ROLE')," >&2
echo "or set EDGESLM_HOST=127.0.0.1 to serve inside the container only." >&2
exit 78
"""

DOCKERIGNORE = """# Only what the Dockerfile copies; the key file is a run-time secret, never part of the image
*
!Dockerfile
!wheels/
!models.eslm
!docker-entrypoint.sh
"""


def compose(params: DockerParams) -> str:
    service = {
        "build": {"context": "."}, "image": params.image,
        "ports": [f"127.0.0.1:{PORT}:{PORT}"],  # the host's loopback; widen it on purpose
        "secrets": ["edgeslm_keys"],  # at /run/secrets/edgeslm_keys, where the entrypoint looks
        "volumes": [f"store:{HOME}"], "read_only": True, "tmpfs": ["/tmp"],
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "restart": "unless-stopped",
    }
    data = {"name": "edgeslm", "services": {"edgeslm": service}, "secrets": {"edgeslm_keys": {"file": "./keys.toml"}},
            "volumes": {"store": {}}}
    head = "# docker compose up --build\n# keys.toml: key hashes (edgeslm keys add keys.toml --id ID --role ROLE)\n"
    return head + to_yaml(data)


def write_docker(
    store: Store, names: Sequence[ModelName], out: Path, params: DockerParams, keys: Path | None = None
) -> str | None:
    """Write the context into the new folder ``out``; the admin key made for it when no key file was given."""
    params.check()
    models = [str(store.get(n).name) for n in names]
    if keys is not None:
        load_keys(keys)  # refused here when it is not a valid key file
    new_key = None
    with staged_folder(out) as tmp:
        (tmp / "wheels").mkdir()
        build_wheel(tmp / "wheels")
        create_bundle(store, list(names), tmp / "models.eslm")
        (tmp / "Dockerfile").write_text(dockerfile(models, params))
        (tmp / ENTRYPOINT).write_text(ENTRYPOINT_SCRIPT)
        (tmp / ENTRYPOINT).chmod(0o755)
        (tmp / ".dockerignore").write_text(DOCKERIGNORE)
        (tmp / "compose.yaml").write_text(compose(params))
        if keys is not None:
            (tmp / "keys.toml").write_bytes(keys.read_bytes())
        else:
            new_key = add_key(tmp / "keys.toml", "admin", "admin")
        (tmp / "keys.toml").chmod(0o644)  # hashes only; compose mounts a file secret with its own mode
    return new_key
