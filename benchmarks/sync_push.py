"""``edgeslm push`` and ``pull --from`` against a plain upload and download of the same blob, same
run, same server, loopback.

The server is a real ``edgeslm serve`` with keys. ``push`` of SmolLM2 (98 MB) into its empty store
(asks what it lacks, uploads in resumable pieces, the server hashes the whole on arrival, then
publishes) is timed against ``curl`` sending the same blob to Ollama's ``POST /api/blobs/sha256:…``
(one request, hashed as it arrives); ``pull --from`` into an empty device against ``curl``
downloading the blob plus ``sha256sum`` of it. Medians of ``--reps``; the ratio is ours / reference.

    .venv/bin/python benchmarks/sync_push.py [--reps 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslm.access.keys import add_key  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402
from tests.servekit import serve_process  # noqa: E402

MODEL = "smollm2-135m-instruct"


def edgeslm(home: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "edgeslm", "--home", str(home), *args], check=True, capture_output=True, timeout=3600
    )


def timed(work: Callable[[], None], reset: Callable[[], None], reps: int) -> float:
    times = []
    for _ in range(reps):
        reset()
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    reps = parser.parse_args().reps
    with tempfile.TemporaryDirectory() as tmp:
        here, cloud, device = Path(tmp) / "here", Path(tmp) / "cloud", Path(tmp) / "device"
        edgeslm(here, "pull", MODEL)
        digest = Store.open(here / "models").get(parse_name(MODEL)).digest
        blob = Store.open(here / "models").blob_path(digest)
        size = blob.stat().st_size
        key = add_key(Path(tmp) / "keys.toml", "admin", "admin")
        (Path(tmp) / "admin.key").write_text(key)
        with serve_process(cloud, "--api-keys", str(Path(tmp) / "keys.toml")) as served:
            edgeslm(here, "remote", "add", "cloud", served.url, "--key-file", str(Path(tmp) / "admin.key"))
            auth = ["-H", f"Authorization: Bearer {key}"]

            def clear_cloud() -> None:
                if Store.open(cloud / "models").find(parse_name(MODEL)):
                    edgeslm(cloud, "rm", MODEL, "-y")
                shutil.rmtree(cloud / "models" / "uploads", ignore_errors=True)

            push = timed(lambda: edgeslm(here, "push", MODEL, "--to", "cloud"), clear_cloud, reps)
            url = f"{served.url}/api/blobs/sha256:{digest.removeprefix('sha256-')}"
            curl_up = timed(lambda: subprocess.run(["curl", "-sSf", "-T", str(blob), *auth, "-X", "POST", url],
                                                    check=True, timeout=3600), clear_cloud, reps)
            edgeslm(here, "push", MODEL, "--to", "cloud")
            edgeslm(device, "remote", "add", "cloud", served.url, "--key-file", str(Path(tmp) / "admin.key"))
            pull = timed(lambda: edgeslm(device, "pull", MODEL, "--from", "cloud"),
                         lambda: shutil.rmtree(device / "models", ignore_errors=True), reps)
            get = f"{served.url}/edgeslm/v1/blobs/{digest}"
            out = Path(tmp) / "blob"
            curl_down = timed(lambda: subprocess.run(f"curl -sSf -H 'Authorization: Bearer {key}' {get} -o {out} "
                                                     f"&& sha256sum {out} > /dev/null", shell=True, check=True,
                                                     timeout=3600),
                              lambda: out.unlink(missing_ok=True), reps)
    print(f"{MODEL}: one blob of {size:,} bytes, median of {reps}, loopback")
    print(f"edgeslm push          {push:6.3f} s   curl POST /api/blobs  {curl_up:6.3f} s   ratio {push / curl_up:.2f}")
    print(
        f"edgeslm pull --from   {pull:6.3f} s   curl GET + sha256sum  {curl_down:6.3f} s   ratio {pull / curl_down:.2f}"
    )


if __name__ == "__main__":
    main()
