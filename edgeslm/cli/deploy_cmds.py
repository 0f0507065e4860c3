"""CLI: deploy (what it takes to run stored models elsewhere: a container, Kubernetes, a Ray cluster)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Settings
from ..store import Store, parse_name
from ..version import __version__
from .output import status


def configure(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="run stored models elsewhere: a container, Kubernetes, a Ray cluster")
    ds = deploy.add_subparsers(dest="deploy_command", metavar="TARGET", required=True)
    p = _target(ds, "k8s", cmd_k8s, "a Kustomize base for 'edgeslm serve' with these models", "slots per replica")
    p.add_argument("--image", help="the image that carries edgeslm and the models' bundle (default edgeslm:VERSION)")
    p.add_argument("--replicas", type=int, default=1, help="the least replicas (default 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="the autoscaler's most (default 4)")
    p.add_argument("--cpu", type=float, default=2.0, help="cores per replica (default 2)")
    p = _target(ds, "docker", cmd_docker, "a build context (Dockerfile, wheel, bundle, compose) serving these models",
                "slots")
    p.add_argument("--image", help="the tag compose gives the image (default edgeslm-models:VERSION)")
    p.add_argument("--python", default="3.11", help="the Python of the base image (default 3.11)")
    p.add_argument("--with-ray", action="store_true", help="also install Ray Serve: an image for deploy ray --k8s")
    p = _target(ds, "ray", cmd_ray, "serve --ray on a Ray cluster: a Ray Serve config, or a KubeRay RayService",
                "slots per replica")
    p.add_argument("--k8s", action="store_true", help="also a KubeRay RayService and its kustomization")
    p.add_argument("--image", help="the image (default edgeslm-ray:VERSION: deploy docker --with-ray)")
    p.add_argument("--min-replicas", type=int, default=1, help="replicas per model at least (default 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="replicas per model at most (default 4)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument("--max-workers", type=int, default=4, help="worker pods at most (--k8s; default 4)")


def _target(ds: Any, name: str, run: Any, what: str, slots: str) -> argparse.ArgumentParser:
    """A deploy target with what every one takes: the models, a new folder, slots, context and keys."""
    p: argparse.ArgumentParser = ds.add_parser(name, help=what)
    p.set_defaults(run=run)
    p.add_argument("names", nargs="+", metavar="NAME", help="the models (a single server loads the first at start)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="a new folder")
    p.add_argument("--parallel", type=int, default=4, help=f"{slots} (serve --parallel; default 4)")
    p.add_argument("--ctx", type=int, default=2048, help="tokens per slot (serve --ctx; default 2048)")
    p.add_argument("--api-keys", type=Path, metavar="FILE", help="the key file to deploy (default: a new admin key)")
    return p


def _show_key(key: str | None) -> None:
    if key:
        print(key)
        status("the admin key above is the only copy: keep it (its hash is in keys.toml)")


def cmd_ray(args: argparse.Namespace, settings: Settings) -> int:
    from ..deploy.rayservice import RayDeployParams, write_ray

    params = RayDeployParams(parallel=args.parallel, ctx=args.ctx, min_replicas=args.min_replicas,
                             max_replicas=args.max_replicas, replica_cpus=args.replica_cpus,
                             max_workers=args.max_workers, **({"image": args.image} if args.image else {}))
    store = Store.open(settings.models_dir)
    key = write_ray(store, [parse_name(n) for n in args.names], args.output, params, k8s=args.k8s, keys=args.api_keys)
    then = f"kubectl apply -k {args.output}" if args.k8s else f"serve deploy {args.output}/serve_config.yaml"
    status(f"wrote {args.output}: {then}")
    _show_key(key)
    return 0


def cmd_docker(args: argparse.Namespace, settings: Settings) -> int:
    from ..deploy.docker import DockerParams, write_docker

    image = args.image or (f"edgeslm-ray:{__version__}" if args.with_ray else None)
    params = DockerParams(python=args.python, parallel=args.parallel, ctx=args.ctx, ray=args.with_ray,
                          **({"image": image} if image else {}))
    store = Store.open(settings.models_dir)
    key = write_docker(store, [parse_name(n) for n in args.names], args.output, params, args.api_keys)
    status(f"wrote {args.output}: cd {args.output} && docker compose up --build")
    _show_key(key)
    return 0


def cmd_k8s(args: argparse.Namespace, settings: Settings) -> int:
    from ..deploy.k8s import K8sParams, write_k8s

    params = K8sParams(replicas=args.replicas, max_replicas=args.max_replicas, parallel=args.parallel, ctx=args.ctx,
                       cpu=args.cpu, **({"image": args.image} if args.image else {}))
    store = Store.open(settings.models_dir)
    sizes, key = write_k8s(store, [parse_name(n) for n in args.names], args.output, params, args.api_keys)
    for s in sizes:
        source = "measured peak RSS" if s.measured else "estimated"
        status(f"{s.model}: {s.weights_or_rss / 2**20:.0f} MiB ({source}) + {s.kv / 2**20:.0f} MiB KV cache")
    status(f"wrote {args.output}: kubectl apply -k {args.output}")
    _show_key(key)
    return 0
