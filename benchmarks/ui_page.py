"""edgeslm's web page against native llama-server's web UI, same run, same browser, loopback.

Each page is loaded ``--reps`` times in headless Debian chromium with its cache off: bytes
transferred (the document and every file it loads; ours also its JSON calls, counted apart),
first contentful paint, the load event, and for ours the moment the model list with its size ×
KLD view is drawn. Goals (issue 19): under 200 KB of assets, first paint under 1 s on loopback.

    .venv/bin/python benchmarks/ui_page.py [--native-bin DIR] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeslm_cli import native_bin  # noqa: E402
from parity import model_files  # noqa: E402

MODEL = "smollm2-135m-instruct"
TIMINGS = """
const nav = performance.getEntriesByType('navigation')[0];
const paint = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');
const files = performance.getEntriesByType('resource');
return {doc: nav.transferSize, load: nav.loadEventEnd, fcp: paint ? paint.startTime : null,
        files: files.map(r => [r.name, r.transferSize, r.decodedBodySize, r.initiatorType])};
"""


@contextmanager
def running(cmd: list[str], url: str, ready: Callable[[httpx.Response], bool]) -> Iterator[None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{cmd[0]} did not answer within 180 s")
            try:
                if ready(httpx.get(url, timeout=2)):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    d.execute_cdp_cmd("Network.enable", {})
    d.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    return d


def measure(d: Any, url: str, reps: int, drawn: str | None) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    fcp, load, ready, weight, api = [], [], [], 0, 0
    for _ in range(reps):
        d.get("about:blank")
        start = time.perf_counter()
        d.get(url)
        if drawn:
            while not d.find_elements(By.CSS_SELECTOR, drawn):
                if time.perf_counter() - start > 30:
                    raise SystemExit(f"{drawn} never appeared on {url}")
                time.sleep(0.005)
            ready.append((time.perf_counter() - start) * 1000)
        time.sleep(0.5)  # late files
        t = d.execute_script(TIMINGS)
        fcp.append(t["fcp"])
        load.append(t["load"])
        data = [f for f in t["files"] if f[3] in ("fetch", "xmlhttprequest")]
        weight = t["doc"] + sum(f[1] for f in t["files"] if f not in data)
        api = sum(f[1] for f in data)
    return {"weight": weight, "api": api, "fcp": statistics.median(fcp), "load": statistics.median(load),
            "ready": statistics.median(ready) if ready else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path, default=None, help="folder with llama-server")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--port", type=int, default=8493)
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    url = f"http://127.0.0.1:{args.port}"
    d = browser()
    try:
        native_cmd = [
            str(bin_dir / "llama-server"),
            "-m",
            str(model_files()[MODEL]),
            "--port",
            str(args.port),
            "-c",
            "2048",
        ]
        with running(native_cmd, url + "/health", lambda r: r.status_code == 200):
            has_ui = httpx.get(url + "/", timeout=10).status_code == 200  # a build may leave its web UI out
            theirs = measure(d, url + "/", args.reps, None) if has_ui else None
        with tempfile.TemporaryDirectory(prefix="ui-bench-") as home:
            subprocess.run(
                [sys.executable, "-m", "edgeslm", "--home", home, "pull", MODEL],
                check=True,
                capture_output=True,
                timeout=3600,
            )
            ours_cmd = [sys.executable, "-m", "edgeslm", "--home", home, "serve", "--port", str(args.port)]
            with running(ours_cmd, url + "/api/version", lambda r: r.status_code == 200):
                ours = measure(d, url + "/ui/#models", args.reps, f'section[data-family="{MODEL}"] table')
    finally:
        d.quit()
    print(f"headless chromium, cache off, loopback, median of {args.reps} loads\n")
    print(f"{'':34} {'llama-server UI':>16} {'edgeslm /ui/':>14} {'ratio':>7}   goal")
    if theirs is None:
        print("(this llama-server was built without its web UI: '/' answers 404, so there is nothing to compare)")
    t = theirs or {"weight": None, "fcp": None, "load": None}
    rows = [
        ("page weight (document + files)", t["weight"] and t["weight"] / 1000, ours["weight"] / 1000, "KB", "< 200 KB"),
        ("first contentful paint", t["fcp"], ours["fcp"], "ms", "< 1000 ms"),
        ("load event", t["load"], ours["load"], "ms", ""),
    ]
    for label, a, b, unit, goal in rows:
        native = f"{a:13.1f} {unit:2}" if a is not None else f"{'-':>16}"
        ratio = f"{b / a:7.2f}" if a else f"{'-':>7}"
        print(f"{label:34} {native} {b:11.1f} {unit:2} {ratio}   {goal}")
    print(f"{'edgeslm: model list + plot drawn':34} {'':16} {ours['ready']:11.1f} ms")
    print(f"{'edgeslm: JSON of its calls':34} {'':16} {ours['api'] / 1000:11.1f} KB")
    met = ours["weight"] < 200_000 and ours["fcp"] < 1000
    print(f"\ngoals {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
