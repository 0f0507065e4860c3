"""``edgeslm deploy docker``: no image can be built here (no base images offline), so the context
is checked the other ways: its Dockerfile parsed instruction by instruction, every file it copies
present and not ignored, and its commands — the wheel installed into a fresh venv, the build-time
import, the entrypoint with and without a key file, the HEALTHCHECK — run from the context."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from edgeslm.deploy.k8s import BUNDLE, HOME, PORT
from edgeslm.store import Store

from .ggufbuild import write_runnable_model
from .servekit import CLIENT_TIMEOUT, free_port


@pytest.fixture
def context(cli: Any, tmp_path: Path, home: Path) -> tuple[Path, str]:
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf")), "--name", "tiny").code == 0
    out = tmp_path / "ctx"
    made = cli("deploy", "docker", "tiny", "-o", str(out), "--parallel", "2", "--ctx", "512")
    assert made.code == 0, made.err
    return out, made.out.strip()


def instructions(ctx: Path) -> list[dict[str, Any]]:
    parser = DockerfileParser(path=str(ctx / "Dockerfile"))
    return list(parser.structure)


def test_the_dockerfile_and_compose_file(context: tuple[Path, str]) -> None:
    ctx, key = context
    steps = instructions(ctx)
    stages = [i for i, s in enumerate(steps) if s["instruction"] == "FROM"]
    assert [steps[i]["value"] for i in stages] == ["python:${PYTHON}-slim AS build", "python:${PYTHON}-slim"]
    final = steps[stages[1] :]
    kinds = [s["instruction"] for s in final]
    user = kinds.index("USER")
    assert final[user]["value"] == "10001:10001" and user < kinds.index("ENTRYPOINT")
    assert kinds.index("USER") < kinds.index("RUN", user)  # the models are imported as that user
    assert next(s["value"] for s in final if s["instruction"] == "EXPOSE") == str(PORT)
    health = next(s["value"] for s in final if s["instruction"] == "HEALTHCHECK")
    assert "/healthz" in health and "--start-period" in health
    assert json.loads(next(s["value"] for s in final if s["instruction"] == "ENTRYPOINT")) == [
        "/usr/local/bin/edgeslm-entrypoint"
    ]
    allowed = [
        line[1:].rstrip("/") for line in (ctx / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    for step in steps:
        if step["instruction"] == "COPY" and "--from" not in step["value"]:
            source = [w for w in shlex.split(step["value"]) if not w.startswith("--")][0].rstrip("/")
            assert (ctx / source).exists() and source in allowed, source
    assert "keys.toml" not in allowed and key.startswith("esk-") and key not in (ctx / "keys.toml").read_text()
    wheel = next(ctx.glob("wheels/edgeslm-*.whl"))
    assert wheel.name in next(s["value"] for s in steps if s["instruction"] == "RUN" and "pip install" in s["value"])
    meta = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
    assert "Requires-Dist: llama-cpp-python==0.3.36" in meta and "Requires-Dist: gemma3" not in meta  # no weights
    compose = yaml.safe_load((ctx / "compose.yaml").read_text())
    service = compose["services"]["edgeslm"]
    assert service["secrets"] == ["edgeslm_keys"] and compose["secrets"]["edgeslm_keys"]["file"] == "./keys.toml"
    assert service["volumes"] == [f"store:{HOME}"] and service["read_only"] is True
    assert service["ports"] == [f"127.0.0.1:{PORT}:{PORT}"] and service["cap_drop"] == ["ALL"]


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv with the context's wheel; its dependencies are read from the test's own (a
    .pth line, which does not run the test venv's editable finder: edgeslm comes from the wheel)."""
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)  # what pip does for a pure wheel, less the script
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = venv / "bin" / "edgeslm"
    script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom edgeslm.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import edgeslm; print(edgeslm.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(str(site)), where
    return venv


def mapped(command: str, store: Path, ctx: Path) -> str:
    return command.replace(HOME, str(store)).replace(BUNDLE, str(ctx / "models.eslm"))


def test_the_context_runs_in_a_fresh_venv(context: tuple[Path, str], tmp_path: Path) -> None:
    ctx, key = context
    venv = fresh_venv(tmp_path, next(ctx.glob("wheels/*.whl")))
    store = tmp_path / "image-store"
    env = {**os.environ, "PATH": f"{venv}/bin:{os.environ['PATH']}", "HOME": str(tmp_path)}
    build = next(s["value"] for s in instructions(ctx) if s["instruction"] == "RUN" and "bundle import" in s["value"])
    done = subprocess.run(mapped(build, store, ctx), shell=True, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "imported tiny:latest" in done.stdout and "clean" in done.stdout, done.stderr
    assert [str(m.name) for m in Store.open(store / "models").manifests()] == ["tiny:latest"]
    port = free_port()
    run = {**env, "EDGESLM_STORE": str(store), "EDGESLM_PRELOAD": "tiny:latest", "EDGESLM_PORT": str(port),
           "EDGESLM_API_KEYS": str(tmp_path / "no-such-secret")}
    refused = subprocess.run(["sh", str(ctx / "docker-entrypoint.sh")], env=run, capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    assert refused.returncode == 78 and "refusing to listen on 0.0.0.0 without a key file" in refused.stderr
    run["EDGESLM_API_KEYS"] = str(ctx / "keys.toml")
    server = subprocess.Popen(["sh", str(ctx / "docker-entrypoint.sh")], env=run, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url, server)
        assert httpx.get(url + "/api/tags", timeout=CLIENT_TIMEOUT).status_code == 401
        tags = httpx.get(url + "/api/tags", headers={"Authorization": f"Bearer {key}"}, timeout=CLIENT_TIMEOUT)
        assert [m["name"] for m in tags.json()["models"]] == ["tiny:latest"]
        health = next(s["value"] for s in instructions(ctx) if s["instruction"] == "HEALTHCHECK")
        probe = json.loads(health.split("CMD", 1)[1].strip())
        probe[-1] = probe[-1].replace(str(PORT), str(port))
        assert subprocess.run([str(venv / "bin" / "python"), *probe[1:]], timeout=30, cwd=tmp_path).returncode == 0
        assert (store / "audit.jsonl").read_text().count("/api/tags") == 2  # probes are not audited
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stderr:
            server.stderr.close()


def _wait(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        assert time.monotonic() < deadline, "the entrypoint's server did not answer"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)


def test_bad_input_writes_nothing(cli: Any, context: tuple[Path, str], tmp_path: Path) -> None:
    missing = cli("deploy", "docker", "absent-model", "-o", str(tmp_path / "a"))
    assert missing.code == 67 and "absent-model" in missing.err and not (tmp_path / "a").exists()
    assert cli("deploy", "docker", "tiny", "-o", str(context[0])).code != 0  # not a new folder
    assert cli("deploy", "docker", "tiny", "-o", str(tmp_path / "b"), "--python", "2.7").code == 2
    bad_keys = tmp_path / "keys.toml"
    bad_keys.write_text("not toml = =")
    assert cli("deploy", "docker", "tiny", "-o", str(tmp_path / "c"), "--api-keys", str(bad_keys)).code != 0
    assert not any((tmp_path / n).exists() for n in ("b", "c"))
