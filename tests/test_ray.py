"""``edgeslm serve --ray`` on a local single-node Ray: the official clients chat through it, two
models scale independently, killing a replica's process fails only what it was serving and Ray
brings it back; without Ray it says how to install it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeslm.access.keys import add_key

from .conftest import edgeslm_command
from .ggufbuild import write_runnable_model
from .servekit import CLIENT_TIMEOUT, Served, serve_process

pytest.importorskip("ray.serve", reason="the extra edgeslm[ray]; make setup installs it")
pytestmark = [pytest.mark.real_model, pytest.mark.slow]
SMOL = "smollm2-135m-instruct:latest"


def replicas(model: str) -> list[int]:
    """PIDs of the Ray Serve replicas of ``model``'s deployment (Ray names its worker processes)."""
    title = f"ray::ServeReplica:edgeslm:model-{model.replace(':', '_')}".encode()
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(title):
                stat = (cmdline.parent / "stat").read_text()
                found[int(cmdline.parent.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return sorted(pid for pid, parent in found.items() if parent not in found)  # not a child between fork and exec


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    home = tmp_path_factory.mktemp("ray-home")
    tiny = write_runnable_model(home / "tiny.gguf")
    for args in (("pull", "smollm2-135m-instruct"), ("import", str(tiny), "--name", "tiny"), ("cp", "tiny", "spare")):
        subprocess.run(edgeslm_command(home, *args), check=True, capture_output=True)
    keyfile = home / "keys.toml"
    key = add_key(keyfile, "admin", "admin")
    with serve_process(home, "--ray", "--model", SMOL, "--model", "tiny", "--parallel", "1", "--max-replicas", "2",
                       "--replica-cpus", "0.1", "--api-keys", str(keyfile), "--audit-log", str(home / "audit.jsonl"),
                       "--ctx", "1024", "--threads", "1") as served:
        _wait_ready(served.url, key)
        yield served, key


def _wait_ready(url: str, key: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/tags", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError("serve --ray did not answer")


def test_the_official_clients_chat_through_ray_serve(ray_server: tuple[Served, str]) -> None:
    import ollama
    import openai

    served, key = ray_server
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=key)
    reply = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Say hello."}],
                                           temperature=0, max_tokens=16)
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    streamed = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Say hello."}],
                                              temperature=0, max_tokens=16, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content  # greedy: the same reply either way
    chat = ollama.Client(host=served.url, headers={"Authorization": f"Bearer {key}"})
    answer = chat.chat(model=SMOL, messages=[{"role": "user", "content": "Say hello."}],
                       options={"temperature": 0, "num_predict": 16})
    assert answer.message.content and answer.eval_count  # (Ollama's defaults differ from OpenAI's: another reply)
    assert {m.model for m in chat.list().models} == {SMOL, "tiny:latest", "spare:latest"}
    assert httpx.get(served.url + "/api/tags", timeout=CLIENT_TIMEOUT).status_code == 401  # the keys still apply
    client.close()
    chat._client.close()


def _load(url: str, key: str, model: str, n: int, tokens: int) -> list[int]:
    """``n`` concurrent generations; the status of each."""
    codes: list[int] = []

    def one() -> None:
        body = {"model": model, "prompt": "Tell a long story about the sea.", "stream": False,
                "options": {"temperature": 0, "num_predict": tokens}}
        codes.append(httpx.post(url + "/api/generate", json=body, headers={"Authorization": f"Bearer {key}"},
                                timeout=300).status_code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def test_two_models_scale_independently(ray_server: tuple[Served, str]) -> None:
    served, key = ray_server
    assert len(replicas(SMOL)) == 1 and len(replicas("tiny:latest")) == 1
    most = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            most[0] = max(most[0], len(replicas(SMOL)))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # waves of 4 at once against 1 slot per replica until Ray adds the second replica; its replicas
        # report their queues every 10 s and it averages over 30 s, so on a slow machine this takes a few waves
        deadline = time.monotonic() + 180
        while most[0] < 2 and time.monotonic() < deadline:
            assert _load(served.url, key, SMOL, 4, 160) == [200] * 4
    finally:
        done.set()
        watcher.join()
    assert most[0] == 2 and len(replicas("tiny:latest")) == 1


def test_killing_a_replica_fails_only_its_requests_and_ray_restarts_it(ray_server: tuple[Served, str]) -> None:
    served, key = ray_server
    headers = {"Authorization": f"Bearer {key}"}
    victim = replicas("tiny:latest")
    assert len(victim) == 1
    body = {"model": "tiny", "prompt": "x", "stream": True, "options": {"num_predict": -1, "temperature": 1}}
    other: list[int] = []
    bystander = threading.Thread(target=lambda: other.extend(_load(served.url, key, SMOL, 1, 64)))
    with httpx.stream("POST", served.url + "/api/generate", json=body, headers=headers, timeout=120) as reply:
        lines = reply.iter_lines()
        assert '"response"' in next(lines)  # generating
        bystander.start()
        os.kill(victim[0], signal.SIGKILL)
        rest = list(lines)
    assert '"error"' in rest[-1] and '"done":true' not in rest[-1]  # the in-flight request fails, said in the stream
    bystander.join()
    assert other == [200]  # the other model's request is untouched
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        short = {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 8}}
        again = httpx.post(served.url + "/api/generate", headers=headers, timeout=60, json=short)
        if again.status_code == 200:
            break
        time.sleep(1)
    assert again.status_code == 200 and replicas("tiny:latest") and replicas("tiny:latest") != victim


def test_serve_ray_without_ray_says_how_to_install_it(tmp_path: Path) -> None:
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    done = subprocess.run([sys.executable, "-m", "edgeslm", "--home", str(tmp_path / "h"), "serve", "--ray", "--model",
                           "tiny"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 69 and "pip install 'edgeslm[ray]'" in done.stderr


def test_serve_ray_refuses_bad_input_before_ray_starts(tmp_path: Path) -> None:
    run = lambda *a: subprocess.run(edgeslm_command(tmp_path / "h", "serve", "--ray", *a), capture_output=True,  # noqa: E731
                                    text=True, timeout=60)
    missing = run("--model", "absent-model")
    assert missing.returncode == 67 and "absent-model" in missing.stderr
    none = run()
    assert none.returncode == 2 and "--model NAME" in none.stderr
    assert run("--model", "x", "--min-replicas", "3", "--max-replicas", "2").returncode == 2
    assert not any(p for p in Path("/proc").glob("[0-9]*/cmdline") if _is_raylet_of(p, tmp_path))


def _is_raylet_of(cmdline: Path, tmp: Path) -> bool:
    try:
        return b"raylet" in cmdline.read_bytes() and str(tmp).encode() in cmdline.read_bytes()
    except OSError:
        return False


def test_a_model_not_deployed_is_named(ray_server: tuple[Served, str]) -> None:
    served, key = ray_server
    body: dict[str, Any] = {"model": "spare", "prompt": "x", "stream": False}  # stored, not deployed
    reply = httpx.post(served.url + "/api/generate", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert reply.status_code == 404 and "not deployed" in reply.text and "--model" in reply.text
