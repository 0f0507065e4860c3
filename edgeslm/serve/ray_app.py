"""``edgeslm serve --ray``: the same server, scaled out on Ray Serve.

Each model is a Ray Serve deployment whose replicas each hold one edgeslm runner (``ModelReplica``:
the runner process the plain server starts, with ``--parallel`` slots); Ray starts, places,
restarts and autoscales them. The ingress is the server's own app (``create_app``: every Ollama
and OpenAI route, keys, audit, metrics, the web page) as a Ray Serve ingress deployment, whose
model manager is given a ``RayRunner`` for each model: a proxy that streams from that model's
deployment handle instead of a local process.

Autoscaling follows ``--parallel``: a replica takes at most ``parallel`` requests at once
(``max_ongoing_requests``), and Ray adds replicas when they average more than three quarters of
that (``target_ongoing_requests``), between ``--min-replicas`` and ``--max-replicas`` per model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import Settings, resolve_settings
from ..errors import EdgeslmError, EngineError, MissingExtraError, ModelNotFoundError, RunnerTimeoutError, UsageError
from ..runner import Chunk, Done, Embeddings, Infill, Job, Tokens
from ..runner.process import EMBED_TIMEOUT
from ..store.resolve import ResolvedModel
from .options import ServeOptions, check_options

log = logging.getLogger(__name__)
RAY_EXTRA = "pip install 'edgeslm[ray]'"
APP_NAME = "edgeslm"
HEALTH_INTERVAL = 5.0  # seconds between checks that the Serve app still runs
UNLIMITED_MEMORY = 1 << 50  # the ingress holds no model: its manager's budget must not refuse one


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"serve --ray needs Ray Serve, which is not installed: {RAY_EXTRA}") from None


@dataclass(frozen=True)
class RayParams:
    models: tuple[str, ...]
    min_replicas: int = 1
    max_replicas: int = 2
    replica_cpus: float = 1.0  # Ray CPUs reserved per replica (a runner's threads)
    address: str | None = None  # an existing cluster ("auto", "ray://HOST:10001"); None starts one here

    def check(self) -> None:
        if not self.models:
            raise UsageError("serve --ray needs the models to deploy: --model NAME (repeatable)", params="models")
        if not 0 <= self.min_replicas <= self.max_replicas or not 1 <= self.max_replicas <= 1000:
            raise UsageError("replicas: 0 <= --min-replicas <= --max-replicas, at most 1,000", params="replicas")
        if not 0 <= self.replica_cpus <= 256:
            raise UsageError("--replica-cpus is 0 to 256", params="replica_cpus")


def deployment_name(model: str) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def autoscaling(params: RayParams, parallel: int) -> dict[str, Any]:
    return {
        "min_replicas": params.min_replicas, "max_replicas": params.max_replicas,
        "target_ongoing_requests": max(1.0, parallel * 0.75), "upscale_delay_s": 3.0, "downscale_delay_s": 60.0,
    }


class ModelReplica:
    """One replica of a model's deployment: an edgeslm runner, started with the replica."""

    def __init__(self, name: str, home: str, slots: int, ctx: int, threads: int | None, load_timeout: float) -> None:
        from ..runner import Runner

        self.name = name
        self.runner = Runner(name, slots=slots, ctx_per_slot=ctx, threads=threads, home=home,
                             load_timeout=load_timeout)

    async def generate(self, job: Job) -> AsyncGenerator[Chunk | Done, None]:
        async for event in self.runner.agenerate(job):
            yield event

    async def embed(self, texts: Sequence[str | Sequence[int]], truncate: bool = False) -> Embeddings:
        return await self.runner.aembed(texts, truncate=truncate)

    async def tokenize(self, content: str, options: dict[str, bool]) -> Tokens:
        return await self.runner.atokenize(content, **options)

    async def detokenize(self, ids: list[int]) -> str:
        return await self.runner.adetokenize(ids)

    async def infill(self, fim: Infill) -> list[int]:
        return await self.runner.ainfill(fim)

    async def count(self, job: Job) -> int:
        return await self.runner.acount(job)

    def pids(self) -> dict[str, int]:
        return {"replica": os.getpid(), "runner": self.runner.pid}

    def check_health(self) -> None:  # Ray calls it; a replica whose runner died is replaced
        if not self.runner.alive:
            raise EngineError(f"the runner of {self.name} stopped")

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()


def _translate(exc: BaseException, name: str) -> EdgeslmError:
    from ray import exceptions

    cause = getattr(exc, "cause", None)
    if isinstance(cause, EdgeslmError):
        return cause
    if isinstance(exc, exceptions.RayActorError | exceptions.ActorDiedError):
        return EngineError(f"the replica serving {name} stopped during this request; Ray starts another, retry")
    return EngineError(f"Ray Serve failed the request to {name}: {str(exc)[:300]}")


class RayRunner:
    """The ingress's runner for a model: every call goes to the model's deployment."""

    def __init__(self, name: str, handle: Any, slots: int, ctx: int) -> None:
        self.name, self.handle = name, handle
        self.info: dict[str, Any] = {"slots": slots, "ctx_per_slot": ctx, "ray_deployment": deployment_name(name)}

    @property
    def alive(self) -> bool:
        return True  # Ray keeps the deployment's replicas alive

    @property
    def pid(self) -> int:
        return os.getpid()

    async def agenerate(self, job: Job) -> AsyncGenerator[Chunk | Done, None]:
        events = self.handle.options(stream=True).generate.remote(job)
        finished = False
        try:
            async for event in events:
                yield event
            finished = True
        except EdgeslmError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors become ours, said in the dialect of the route
            raise _translate(exc, self.name) from None
        finally:
            if not finished:
                events.cancel()  # the replica's generator is closed: its runner frees the slot

    async def aembed(self, texts: Sequence[str | Sequence[int]], *, truncate: bool = False) -> Embeddings:
        result: Embeddings = await self._call(self.handle.embed.remote(
            [t if isinstance(t, str) else list(t) for t in texts], truncate), "embed")
        return result

    async def atokenize(self, content: str, *, add_special: bool = False, parse_special: bool = True,
                        with_pieces: bool = False) -> Tokens:
        options = {"add_special": add_special, "parse_special": parse_special, "with_pieces": with_pieces}
        result: Tokens = await self._call(self.handle.tokenize.remote(content, options), "tokenize")
        return result

    async def adetokenize(self, ids: Sequence[int]) -> str:
        result: str = await self._call(self.handle.detokenize.remote(list(ids)), "detokenize")
        return result

    async def ainfill(self, fim: Infill) -> list[int]:
        result: list[int] = await self._call(self.handle.infill.remote(fim), "build a fill-in-the-middle prompt")
        return result

    async def acount(self, job: Job) -> int:
        result: int = await self._call(self.handle.count.remote(job), "count a prompt's tokens")
        return result

    async def _call(self, response: Any, what: str) -> Any:
        """The replica's answer within its runner's deadline and as long again for Ray's hops; past
        that (or when the caller is cancelled: a client gone) the call is cancelled in Ray too."""
        try:
            return await asyncio.wait_for(response, 2 * EMBED_TIMEOUT)
        except TimeoutError:
            response.cancel()
            raise RunnerTimeoutError(
                f"Ray Serve did not {what} for {self.name} within {2 * EMBED_TIMEOUT:g} s") from None
        except EdgeslmError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, self.name) from None

    def close(self) -> None:
        pass


class Ingress:
    """The server's app as Ray Serve's ingress; its runners are the model deployments' handles."""

    def __init__(self, options: ServeOptions, home: str, handles: Mapping[str, Any], parallel: int) -> None:
        self.options = options
        self.settings = resolve_settings(home=Path(home))
        self.handles, self.parallel = dict(handles), parallel

    def runner(self, model: ResolvedModel, *, slots: int, ctx_per_slot: int, **_: Any) -> RayRunner:
        """The manager's factory: the model, resolved by the manager, is served by its deployment
        (whose replicas loaded it by name when the app was built)."""
        name = model.name
        handle = self.handles.get(name)
        if handle is None:
            raise ModelNotFoundError(f"{name} is not deployed on this Ray Serve app; deployed: "
                                     f"{', '.join(sorted(self.handles))} (serve --ray --model NAME)")
        return RayRunner(name, handle, self.parallel, ctx_per_slot)

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app

        return create_app(self.options, self.settings, self.runner)


def build_app(options: ServeOptions, settings: Settings, params: RayParams) -> Any:
    """The Ray Serve application: one deployment per model, and the ingress."""
    from ray import serve

    from ..store import Store, parse_name

    check_options(options)
    params.check()
    store = Store.open(settings.models_dir)
    names = [str(store.get(parse_name(m)).name) for m in params.models]  # each must be stored
    handles = {}
    for name in names:
        deployment: Any = serve.deployment(
            ModelReplica, name=deployment_name(name), max_ongoing_requests=options.parallel,
            autoscaling_config=autoscaling(params, options.parallel),
            ray_actor_options={"num_cpus": params.replica_cpus},
        )
        handles[name] = deployment.bind(name, str(settings.home), options.parallel, options.ctx, options.threads,
                                        options.load_timeout)
    front = replace(options, parallel=options.parallel * max(1, params.max_replicas), preload=None, pin=(),
                    max_loaded=len(names), memory=UNLIMITED_MEMORY, keep_alive=-1)
    ingress: Any = serve.deployment(serve.ingress()(Ingress), name="ingress", max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(front, str(settings.home), handles, options.parallel)


def _app_running(serve: Any) -> bool:
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # noqa: BLE001 - Ray gone: the controller cannot be asked
        return False
    return app is not None and getattr(app.status, "value", app.status) not in ("DEPLOY_FAILED", "DELETING")


def build(args: dict[str, Any]) -> Any:
    """For a Ray Serve config (``deploy ray``): ``import_path: edgeslm.serve.ray_app:build`` with ``args``."""
    models = tuple(str(m) for m in args.get("models", ()))
    keys, audit = args.get("api_keys"), args.get("audit_log")
    options = ServeOptions(host=str(args.get("host", "127.0.0.1")), api_keys=Path(keys) if keys else None,
                           audit_log=Path(audit) if audit else None, parallel=int(args.get("parallel", 4)),
                           ctx=int(args.get("ctx", 2048)))
    params = RayParams(models, int(args.get("min_replicas", 1)), int(args.get("max_replicas", 2)),
                       float(args.get("replica_cpus", 1.0)))
    return build_app(options, resolve_settings(home=Path(args["home"])) if args.get("home") else resolve_settings(),
                     params)


def run_ray(options: ServeOptions, settings: Settings, params: RayParams) -> None:
    """Start (or join) Ray, run the app on ``options.host:port`` until SIGINT or SIGTERM."""
    require_ray()
    import ray
    from ray import serve

    app = build_app(options, settings, params)  # refused before Ray starts: unknown models, bad options
    ray.init(address=params.address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"EDGESLM_HOME": str(settings.home)}})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        log.info("serving %s on Ray Serve at http://%s:%d", ", ".join(params.models), options.host, options.port)
        while not stop.wait(HEALTH_INTERVAL):  # Ctrl-C or SIGTERM; else check the app is still there
            if not _app_running(serve):
                log.error("the Ray Serve application %s is gone (its controller or cluster stopped); exiting", APP_NAME)
                break
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
