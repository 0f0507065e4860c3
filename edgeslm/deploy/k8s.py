"""``edgeslm deploy k8s``: a Kustomize base for ``edgeslm serve``.

Objects: a Deployment (an init container imports the models' bundle from the image into an
emptyDir store, so replicas share nothing and scale freely; memory requests and limits from the
models' measured peak RSS, else their estimate, plus the KV cache of every slot; probes on the
public ``/healthz``; non-root, read-only root filesystem, no privilege escalation, no
capabilities), a Service, a Secret of the key file (hashes only), a PodDisruptionBudget, a
NetworkPolicy (in: the API port; out: nothing), and a HorizontalPodAutoscaler on CPU; a Kustomize
component switches it to the server's queue depth through a custom metrics adapter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..access.keys import add_key, load_keys
from ..config import DEFAULT_PORT
from ..errors import InvalidParameterError
from ..evaluate.kept import latest_results
from ..formats.model_info import estimate_memory
from ..store import ModelName, Store
from ..store.atomic import staged_folder
from ..store.records import Manifest
from ..version import __version__

log = logging.getLogger(__name__)
APP = "edgeslm"
PORT = DEFAULT_PORT
HOME = "/var/lib/edgeslm"
BUNDLE = "/opt/edgeslm/models.eslm"  # where the image carries the models (edgeslm deploy docker puts them there)
UID = 10001
SERVER_OVERHEAD = 256 * 2**20  # the HTTP process and a runner's own memory beside the model
LIMIT_HEADROOM = 1.25


@dataclass(frozen=True)
class K8sParams:
    image: str = f"edgeslm:{__version__}"
    replicas: int = 1
    max_replicas: int = 4
    parallel: int = 4
    ctx: int = 2048  # tokens per slot
    cpu: float = 2.0  # cores per replica (request and limit)
    cpu_target: int = 70  # per cent, for the autoscaler
    queue_target: float = 2.0  # requests waiting per replica, for the queue-depth variant

    def check(self) -> None:
        if not 1 <= self.replicas <= self.max_replicas <= 1000:
            raise InvalidParameterError("replicas must be 1 to max_replicas (at most 1,000)", params="replicas")
        if not 1 <= self.parallel <= 256 or not 64 <= self.ctx <= 1 << 20 or not 0.1 <= self.cpu <= 256:
            raise InvalidParameterError("parallel 1-256, ctx 64-1,048,576 and cpu 0.1-256", params=("parallel", "ctx"))


@dataclass(frozen=True)
class Sizing:
    model: str
    weights_or_rss: int  # bytes: measured peak RSS where kept, else the estimate of the weights
    measured: bool
    kv: int  # the KV cache of every slot


def size_models(store: Store, manifests: Sequence[Manifest], params: K8sParams) -> list[Sizing]:
    results = latest_results(store, manifests)
    out = []
    for m in manifests:
        estimate = estimate_memory(m.info, params.ctx * params.parallel)
        r = results.get(str(m.name))
        rss = r.speed.peak_rss if r and r.speed else None
        out.append(Sizing(str(m.name), rss or estimate.weights_bytes, rss is not None, estimate.kv_cache_bytes))
    return out


def mi(n: float) -> str:
    return f"{math.ceil(n / 2**20)}Mi"


LABELS = {"app.kubernetes.io/name": APP}
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
MOUNTS = ({"name": "store", "mountPath": HOME}, {"name": "tmp", "mountPath": "/tmp"})
KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}


def _object(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": APP, "labels": LABELS}, "spec": spec}


def objects(manifests: Sequence[Manifest], sizes: Sequence[Sizing], params: K8sParams) -> dict[str, Any]:
    """The base's files: name -> object (written as YAML)."""
    queue_patch = [{"op": "replace", "path": "/spec/metrics", "value": [{"type": "Pods", "pods": {
        "metric": {"name": "edgeslm_queue_depth"},
        "target": {"type": "AverageValue", "averageValue": str(params.queue_target)}}}]}]
    return {
        "kustomization.yaml": {**KUSTOMIZATION, "resources": ["base"]},  # kubectl apply -k DIR
        "base/kustomization.yaml": {
            **KUSTOMIZATION, "labels": [{"pairs": {"app.kubernetes.io/part-of": APP}}],
            "resources": ["deployment.yaml", "service.yaml", "pdb.yaml", "networkpolicy.yaml", "hpa.yaml"],
            "secretGenerator": [{"name": "edgeslm-keys", "files": ["keys.toml"]}],
        },
        "base/deployment.yaml": _deployment(manifests, sizes, params),
        "base/service.yaml": _object("v1", "Service", {
            "selector": LABELS, "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}),
        "base/pdb.yaml": _object("policy/v1", "PodDisruptionBudget",
                                 {"maxUnavailable": 1, "selector": {"matchLabels": LABELS}}),
        "base/networkpolicy.yaml": _object("networking.k8s.io/v1", "NetworkPolicy", {
            "podSelector": {"matchLabels": LABELS}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": PORT, "protocol": "TCP"}]}], "egress": []}),
        "base/hpa.yaml": _object("autoscaling/v2", "HorizontalPodAutoscaler", {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
            "minReplicas": params.replicas, "maxReplicas": params.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": params.cpu_target}}}]}),
        "components/queue-depth/kustomization.yaml": {
            "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
            "patches": [{"target": {"kind": "HorizontalPodAutoscaler", "name": APP}, "patch": to_yaml(queue_patch)}],
        },
        "overlays/queue-depth/kustomization.yaml": {
            **KUSTOMIZATION, "resources": ["../../base"], "components": ["../../components/queue-depth"],
        },
    }


def import_container(image: str) -> dict[str, Any]:
    """The init container that imports the image's bundle into the pod's store (an emptyDir)."""
    return {
        "name": "import-models", "image": image, "command": ["edgeslm"],
        "args": ["--home", HOME, "bundle", "import", BUNDLE],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "securityContext": RESTRICTED, "volumeMounts": list(MOUNTS),
    }


def _deployment(manifests: Sequence[Manifest], sizes: Sequence[Sizing], params: K8sParams) -> dict[str, Any]:
    request = sum(s.weights_or_rss + s.kv for s in sizes) + SERVER_OVERHEAD
    store_bytes = sum(sum(m.blob_sizes().values()) for m in manifests)
    init = import_container(params.image)
    return _object("apps/v1", "Deployment", {
        "replicas": params.replicas, "selector": {"matchLabels": LABELS},
        "template": {
            "metadata": {"labels": LABELS, "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "initContainers": [init], "containers": [_server(manifests, request, params)],
                "volumes": [
                    {"name": "store", "emptyDir": {"sizeLimit": mi(store_bytes * 1.1 + 64 * 2**20)}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "keys", "secret": {"secretName": "edgeslm-keys", "defaultMode": 0o440}},
                ],
            },
        },
    })


def _server(manifests: Sequence[Manifest], request: int, params: K8sParams) -> dict[str, Any]:
    """The container running ``edgeslm serve``: beyond loopback, so with the key file (serve refuses otherwise)."""
    serve = ["--home", HOME, "serve", "--host", "0.0.0.0", "--port", str(PORT), "--api-keys", "/etc/edgeslm/keys.toml",
             "--audit-log", f"{HOME}/audit.jsonl", "--parallel", str(params.parallel), "--ctx", str(params.ctx),
             "--max-loaded", str(len(manifests)), "--max-memory", str(request - SERVER_OVERHEAD),
             "--preload", str(manifests[0].name)]
    probe = {"httpGet": {"path": "/healthz", "port": "http"}}
    return {
        "name": APP, "image": params.image, "command": ["edgeslm"], "args": serve,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "EDGESLM_OFFLINE", "value": "1"}],
        "resources": {"requests": {"cpu": str(params.cpu), "memory": mi(request)},
                      "limits": {"cpu": str(params.cpu), "memory": mi(request * LIMIT_HEADROOM)}},
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},  # loading the first model
        "readinessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 3},
        "livenessProbe": {**probe, "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": RESTRICTED,
        "volumeMounts": [*MOUNTS, {"name": "keys", "mountPath": "/etc/edgeslm", "readOnly": True}],
    }


def to_yaml(data: Any) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def write_k8s(
    store: Store, names: Sequence[ModelName], out: Path, params: K8sParams, keys: Path | None = None
) -> tuple[list[Sizing], str | None]:
    """Write the base into the new folder ``out``; returns the sizing and, when no key file was
    given, the admin key made for it (shown once, never written)."""
    params.check()
    manifests = [store.get(n) for n in names]
    sizes = size_models(store, manifests, params)
    files = objects(manifests, sizes, params)
    new_key = None
    with staged_folder(out) as tmp:
        if keys is not None:
            load_keys(keys)  # refused here when it is not a valid key file
            (tmp / "base").mkdir()
            (tmp / "base" / "keys.toml").write_bytes(keys.read_bytes())
        else:
            (tmp / "base").mkdir()
            new_key = add_key(tmp / "base" / "keys.toml", "admin", "admin")
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(to_yaml(data))
        (tmp / "README.md").write_text(_readme(manifests, sizes, params))
    return sizes, new_key


def _readme(manifests: Sequence[Manifest], sizes: Sequence[Sizing], params: K8sParams) -> str:
    lines = [
        f"# edgeslm on Kubernetes: {', '.join(str(m.name) for m in manifests)}", "",
        f"Image: `{params.image}`, which must carry the models as a bundle at `{BUNDLE}` "
        "(`edgeslm deploy docker` builds such an image; or `edgeslm bundle create` and COPY it there).", "",
        "    kubectl apply -k .                      # CPU autoscaling",
        "    kubectl apply -k overlays/queue-depth   # autoscaling on edgeslm_queue_depth instead", "",
        "The queue-depth variant needs a custom metrics adapter (e.g. prometheus-adapter) that serves the",
        "pods metric `edgeslm_queue_depth` from each pod's `/metrics` (the pods are annotated for scraping).", "",
        "Memory per replica (requests; limits are 1.25x):", "",
    ]
    for s in sizes:
        source = "measured peak RSS" if s.measured else "estimated weights"
        lines.append(f"- {s.model}: {mi(s.weights_or_rss)} ({source}) + {mi(s.kv)} KV cache "
                     f"({params.parallel} slots x {params.ctx} tokens)")
    lines += ["", f"- server: {mi(SERVER_OVERHEAD)}", "", "base/keys.toml holds key hashes only; add keys with "
              "`edgeslm keys add base/keys.toml --id NAME --role user`.", ""]
    return "\n".join(lines)
