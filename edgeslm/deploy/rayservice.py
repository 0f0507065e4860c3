"""``edgeslm deploy ray NAME… -o DIR [--k8s]``: ``serve --ray`` for a Ray cluster.

DIR/serve_config.yaml   a Ray Serve config (``serve deploy serve_config.yaml`` on a running
                        cluster): the application ``edgeslm.serve.ray_app:build`` with its args
DIR/keys.toml           key hashes (the cluster's nodes read it from /etc/edgeslm)
--k8s, for KubeRay:
DIR/rayservice.yaml     a RayService: that config as ``serveConfigV2``, a head group (Serve's
                        controller, proxy and the ingress; no model replicas) and a worker group
                        that KubeRay's autoscaler grows with the replicas; every pod imports the
                        image's bundle into its own store first, as the Kubernetes base does
DIR/networkpolicy.yaml  what may reach the cluster's pods: the Serve port (keyed) from anywhere;
                        Ray's own ports (GCS, object store, client) only from the cluster's pods;
                        the dashboard, whose Jobs API runs code without a key, only from the
                        KubeRay operator, which deploys the Serve config through it (so it cannot be
                        bound to loopback); out: the cluster's pods and DNS
DIR/kustomization.yaml  the RayService, the NetworkPolicy and the key Secret: kubectl apply -k DIR
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..access.keys import add_key, load_keys
from ..errors import InvalidParameterError
from ..store import ModelName, Store
from ..store.atomic import staged_folder
from ..version import __version__
from .k8s import (
    HOME,
    KUSTOMIZATION,
    LABELS,
    MOUNTS,
    RESTRICTED,
    SERVER_OVERHEAD,
    UID,
    K8sParams,
    import_container,
    mi,
    size_models,
    to_yaml,
)

RAY_VERSION = "2.60.0"  # the version the extra edgeslm[ray] pins
SERVE_PORT = 8000  # KubeRay's serve service points at the container port named "serve"
DASHBOARD_PORT = 8265
RAY_LABELS = {**LABELS, "app.kubernetes.io/instance": "edgeslm-ray"}  # the Ray cluster's pods, not k8s's
OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}  # the KubeRay Helm chart's operator pods
KEYS = "/etc/edgeslm/keys.toml"


@dataclass(frozen=True)
class RayDeployParams:
    image: str = f"edgeslm-ray:{__version__}"  # edgeslm deploy docker --with-ray builds one
    parallel: int = 4
    ctx: int = 2048
    min_replicas: int = 1
    max_replicas: int = 4
    replica_cpus: float = 1.0
    max_workers: int = 4  # worker pods KubeRay may run

    def check(self) -> None:
        K8sParams(parallel=self.parallel, ctx=self.ctx).check()
        if not 0 <= self.min_replicas <= self.max_replicas <= 1000 or not 1 <= self.max_workers <= 1000:
            raise InvalidParameterError("0 <= min replicas <= max replicas <= 1,000; 1 to 1,000 workers",
                                        params=("min_replicas", "max_replicas"))
        if not 0.1 <= self.replica_cpus <= 256:
            raise InvalidParameterError("replica cpus 0.1 to 256", params="replica_cpus")


def serve_config(models: Sequence[str], params: RayDeployParams) -> dict[str, Any]:
    # A cluster's proxies listen on every address, so the app runs with the key file (serve refuses otherwise).
    args = {"models": list(models), "host": "0.0.0.0", "home": HOME, "api_keys": KEYS,
            "audit_log": f"{HOME}/audit.jsonl", "parallel": params.parallel, "ctx": params.ctx,
            "min_replicas": params.min_replicas, "max_replicas": params.max_replicas,
            "replica_cpus": params.replica_cpus}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [{"name": "edgeslm", "route_prefix": "/", "import_path": "edgeslm.serve.ray_app:build",
                          "args": args, "runtime_env": {"env_vars": {"EDGESLM_OFFLINE": "1", "HOME": "/tmp"}}}],
    }


def _pod(image: str, role: str, memory: int, cpu: float, store_bytes: int) -> dict[str, Any]:
    ports = [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": DASHBOARD_PORT}]
    ports = ports if role == "head" else []
    container = {
        "name": f"ray-{role}", "image": image,
        "ports": [*ports, {"name": "serve", "containerPort": SERVE_PORT}],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "EDGESLM_OFFLINE", "value": "1"}],
        "resources": {"requests": {"cpu": str(cpu), "memory": mi(memory)},
                      "limits": {"cpu": str(cpu), "memory": mi(memory * 1.25)}},
        "securityContext": RESTRICTED,
        "volumeMounts": [*MOUNTS, {"name": "keys", "mountPath": "/etc/edgeslm", "readOnly": True},
                         {"name": "shm", "mountPath": "/dev/shm"}],
    }
    return {
        "metadata": {"labels": {**RAY_LABELS, "app.kubernetes.io/component": f"ray-{role}"}},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [import_container(image)], "containers": [container],
            "volumes": [
                {"name": "store", "emptyDir": {"sizeLimit": mi(store_bytes * 1.1 + 64 * 2**20)}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},  # Ray's object store
                {"name": "keys", "secret": {"secretName": "edgeslm-keys", "defaultMode": 0o440}},
            ],
        },
    }


def rayservice(config: dict[str, Any], worker_memory: int, store_bytes: int, params: RayDeployParams) -> dict[str, Any]:
    per_pod = max(1, int(params.replica_cpus))
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "edgeslm", "labels": LABELS},
        "spec": {
            "serveConfigV2": to_yaml(config),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION, "enableInTreeAutoscaling": True,
                # the operator reaches the dashboard from its own pod; networkpolicy.yaml lets only it in
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                                  "template": _pod(params.image, "head", 2 * 2**30, 1.0, store_bytes)},
                "workerGroupSpecs": [{
                    "groupName": "models", "replicas": 1, "minReplicas": 1, "maxReplicas": params.max_workers,
                    "rayStartParams": {}, "template": _pod(params.image, "worker", worker_memory, per_pod, store_bytes),
                }],
            },
        },
    }


def network_policy() -> dict[str, Any]:
    """Deny by default; see the module's docstring for what is let through."""
    own = {"podSelector": {"matchLabels": RAY_LABELS}}
    ingress = [
        {"ports": [{"port": SERVE_PORT, "protocol": "TCP"}]},
        {"from": [own]},
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": OPERATOR}}],
         "ports": [{"port": DASHBOARD_PORT, "protocol": "TCP"}]},
    ]
    dns = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "edgeslm-ray", "labels": RAY_LABELS},
        "spec": {"podSelector": {"matchLabels": RAY_LABELS}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": ingress, "egress": [{"to": [own]}, {"ports": dns}]},
    }


def write_ray(store: Store, names: Sequence[ModelName], out: Path, params: RayDeployParams, *, k8s: bool = False,
              keys: Path | None = None) -> str | None:
    """Write the folder; the admin key made for it when no key file was given."""
    params.check()
    manifests = [store.get(n) for n in names]
    models = [str(m.name) for m in manifests]
    config = serve_config(models, params)
    if keys is not None:
        load_keys(keys)
    sizes = size_models(store, manifests, K8sParams(parallel=params.parallel, ctx=params.ctx))
    worker_memory = max(s.weights_or_rss + s.kv for s in sizes) + SERVER_OVERHEAD  # one replica of the largest
    store_bytes = sum(sum(m.blob_sizes().values()) for m in manifests)
    new_key = None
    with staged_folder(out) as tmp:
        if keys is not None:
            (tmp / "keys.toml").write_bytes(keys.read_bytes())
        else:
            new_key = add_key(tmp / "keys.toml", "admin", "admin")
        (tmp / "serve_config.yaml").write_text(to_yaml(config))
        if k8s:
            (tmp / "rayservice.yaml").write_text(to_yaml(rayservice(config, worker_memory, store_bytes, params)))
            (tmp / "networkpolicy.yaml").write_text(to_yaml(network_policy()))
            kustomization = {
                **KUSTOMIZATION,
                "resources": ["rayservice.yaml", "networkpolicy.yaml"],
                "secretGenerator": [{"name": "edgeslm-keys", "files": ["keys.toml"]}],
                "generatorOptions": {"disableNameSuffixHash": True},  # kustomize does not rename it inside a CRD
            }  # a CRD's secret name is not rewritten
            (tmp / "kustomization.yaml").write_text(to_yaml(kustomization))
    return new_key
