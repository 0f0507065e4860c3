"""``edgeslm deploy ray``: the Ray Serve config validates against Ray's own schema and its
application builds from the store; ``--k8s`` renders with ``kubectl kustomize`` into a KubeRay
RayService whose pod templates validate against the Kubernetes schemas, offline."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeslm.deploy.k8s import BUNDLE, HOME
from edgeslm.store import Store

from .ggufbuild import write_runnable_model
from .test_deploy import render

pytest.importorskip("ray.serve", reason="the extra edgeslm[ray]; make setup installs it")

# KubeRay's ray.io/v1 RayService, the fields edgeslm writes (the CRD itself is not kept here)
RAYSERVICE_SPEC = {"serveConfigV2", "rayClusterConfig"}
CLUSTER = {"rayVersion", "enableInTreeAutoscaling", "headGroupSpec", "workerGroupSpecs"}
HEAD = {"rayStartParams", "template"}
WORKER = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"}


@pytest.fixture
def store(cli: Any, tmp_path: Path, home: Path) -> Store:
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf")), "--name", "tiny").code == 0
    return Store.open(home / "models")


def test_the_ray_serve_config_validates_and_builds(cli: Any, store: Store, tmp_path: Path, home: Path) -> None:
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "ray"
    made = cli("deploy", "ray", "tiny", "-o", str(out), "--max-replicas", "3", "--parallel", "2")
    assert made.code == 0, made.err
    config = yaml.safe_load((out / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # raises on anything Ray would refuse
    app = config["applications"][0]
    module, _, name = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    args = {**app["args"], "home": str(home)}  # the store a node would have imported
    assert app["args"]["models"] == ["tiny:latest"] and app["args"]["max_replicas"] == 3
    assert isinstance(builder(args), Application) and app["args"]["host"] == "0.0.0.0"  # a cluster's, keyed
    local = {k: v for k, v in args.items() if k not in ("host", "api_keys")}
    assert isinstance(builder(local), Application)  # without a host: loopback, where no key file is needed
    assert not (out / "rayservice.yaml").exists() and made.out.strip().startswith("esk-")


def test_the_rayservice_renders_and_its_pods_validate(cli: Any, store: Store, tmp_path: Path) -> None:
    import kubernetes_validate
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "ray"
    assert cli("deploy", "ray", "tiny", "-o", str(out), "--k8s", "--max-workers", "3", "--replica-cpus", "2").code == 0
    objects = {o["kind"]: o for o in render(out)}
    assert set(objects) == {"RayService", "Secret", "NetworkPolicy"}
    kubernetes_validate.validate(objects["Secret"], "1.32", strict=True)
    kubernetes_validate.validate(objects["NetworkPolicy"], "1.32", strict=True)
    service = objects["RayService"]
    assert service["apiVersion"] == "ray.io/v1" and set(service["spec"]) == RAYSERVICE_SPEC
    ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    cluster = service["spec"]["rayClusterConfig"]
    assert set(cluster) == CLUSTER and set(cluster["headGroupSpec"]) == HEAD
    assert [set(w) for w in cluster["workerGroupSpecs"]] == [WORKER] and cluster["workerGroupSpecs"][0][
        "maxReplicas"
    ] == 3
    assert all(isinstance(v, str) for g in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])
               for v in g["rayStartParams"].values())
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        template = group["template"]
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "edgeslm"}, "template": template}
        kubernetes_validate.validate(pod, "1.32", strict=True)
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["initContainers"][0]["args"][-1] == BUNDLE
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        assert {"mountPath": HOME, "name": "store"} in spec["containers"][0]["volumeMounts"]
        assert any(
            v.get("secret", {}).get("secretName") == objects["Secret"]["metadata"]["name"] for v in spec["volumes"]
        )
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"]["cpu"] == "2"


def test_the_rayservice_lets_only_the_serve_port_in_from_outside(cli: Any, store: Store, tmp_path: Path) -> None:
    """Ray's dashboard (its Jobs API runs code without a key), GCS and client ports are reachable
    only from the cluster's own pods, and the dashboard from the KubeRay operator; the keyed Serve
    port from anywhere. Every pod of the RayService is under the policy."""
    out = tmp_path / "ray"
    assert cli("deploy", "ray", "tiny", "-o", str(out), "--k8s").code == 0
    objects = {o["kind"]: o for o in render(out)}
    policy = objects["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    selector = policy["podSelector"]["matchLabels"]
    cluster = objects["RayService"]["spec"]["rayClusterConfig"]
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        assert selector.items() <= group["template"]["metadata"]["labels"].items()
    open_ports = [p["port"] for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]]
    assert open_ports == [8000]
    for rule in policy["ingress"]:
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:  # from other namespaces: the operator's pods, to the dashboard only
                assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                assert [p["port"] for p in rule["ports"]] == [8265]
            else:
                assert peer == {"podSelector": {"matchLabels": selector}}
    assert all(rule.get("to") == [{"podSelector": {"matchLabels": selector}}] or
               {p["port"] for p in rule["ports"]} == {53} for rule in policy["egress"])
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert 10001 not in {p["containerPort"] for p in head["ports"]}


def test_deploy_ray_bad_input_writes_nothing(cli: Any, store: Store, tmp_path: Path) -> None:
    missing = cli("deploy", "ray", "absent-model", "-o", str(tmp_path / "a"))
    assert missing.code == 67 and "absent-model" in missing.err
    assert (
        cli("deploy", "ray", "tiny", "-o", str(tmp_path / "b"), "--min-replicas", "5", "--max-replicas", "2").code == 2
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
