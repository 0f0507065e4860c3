"""The web page in a real browser: Debian's chromium, headless, driven by Selenium through
chromedriver, against ``edgeslm serve`` on the builtin model with variants measured by
``edgeslm optimize`` (and, for hostile replies, the real server on a runner that sends them).

Screenshots of each page are written under the test's temp dir (their path is printed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeslm.access.keys import add_key
from edgeslm.evaluate.kept import latest_results
from edgeslm.store import Store, parse_name

from .fake_runner import FakeRunner
from .ggufbuild import write_runnable_model
from .servekit import Served, serve_process, serving

pytestmark = [pytest.mark.real_model, pytest.mark.browser]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MODEL = "smollm2-135m-instruct"
WAIT = 60.0  # seconds any one thing may take to appear


def _need_browser() -> None:
    if CHROMIUM and CHROMEDRIVER:
        return
    message = "Debian's chromium and chromium-driver are needed (make test installs them: make browser)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs them: missing there is a failure, not a skip
    pytest.skip(message)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
                f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = tmp_path_factory.mktemp("downloads")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    d.downloads = downloads
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui-screenshots")
    print(f"\nscreenshots: {path}", file=sys.stderr)
    return path


@pytest.fixture(scope="module")
def measured(builtin_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the builtin model, its variants measured and chosen by a real optimize run."""
    home = tmp_path_factory.mktemp("ui-home")
    shutil.copytree(builtin_home / "models", home / "models", ignore=shutil.ignore_patterns("store.lock", "tmp"))
    cmd = [sys.executable, "-m", "edgeslm", "--home", str(home), "optimize", MODEL, "--types", "q8_0,q4_0",
           "--ctx", "128", "--chunks", "2", "--max-size", "95MB", "--max-kld", "0.5", "--no-mixed",
           "--report", str(home / "report")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return home


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    return path, {role: add_key(path, f"{role}-1", role) for role in ("admin", "user", "reader")}


@pytest.fixture(scope="module")
def server(measured: Path, keys: tuple[Path, dict[str, str]]) -> Iterator[Served]:
    audit = measured / "audit.jsonl"
    with serve_process(measured, "--api-keys", str(keys[0]), "--audit-log", str(audit), "--parallel", "2") as served:
        yield served


# -- helpers ----------------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if found := check():
                return found
        except Exception:  # noqa: BLE001 - the page is still changing; look again
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def errors(d: Any) -> list[dict[str, Any]]:
    """Console errors since the last call (chromedriver hands each entry out once)."""
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def by_css(d: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(d.find_elements(By.CSS_SELECTOR, selector))


def sign_in(d: Any, url: str, key: str) -> None:
    """Open the page in a fresh tab state and give ``key`` where the page asks for it."""
    d.get(url + "/ui/#models")
    d.execute_script("sessionStorage.clear()")
    d.refresh()
    field = wait_for("the key prompt", lambda: by_css(d, "dialog[open] #api-key"))[0]
    field.send_keys(key + "\n")
    wait_for("the model list", lambda: by_css(d, "section.family"))


def visit(d: Any, url: str, page: str, ready: str, shots: Path) -> None:
    d.get(f"{url}/ui/#{page}")
    d.refresh()  # a hash change alone does not reload the page
    wait_for(f"the {page} page", lambda: by_css(d, ready))
    time.sleep(0.3)  # late requests (fonts, icons) would log their failures now
    d.save_screenshot(str(shots / f"{page}.png"))


# -- tests ------------------------------------------------------------------------------------


def test_every_page_loads_without_console_errors(driver: Any, server: Served, keys: Any, shots: Path) -> None:
    sign_in(driver, server.url, keys[1]["admin"])
    errors(driver)
    for page, ready in (("models", "section.family svg.pareto"), ("chat", "#chat-model option"),
                        ("server", "#loaded tbody tr"), ("audit", "#chain")):
        visit(driver, server.url, page, ready, shots)
        assert errors(driver) == [], page
        nav = [a.text for a in by_css(driver, "#nav a") if a.is_displayed()]
        assert nav == ["Models", "Chat", "Server", "Audit"]
    assert "intact" in by_css(driver, "#chain")[0].text
    assert sorted(p.name for p in shots.glob("*.png")) == ["audit.png", "chat.png", "models.png", "server.png"]


def test_the_models_page_shows_the_builtins_measured_variants(
    driver: Any, server: Served, keys: Any, measured: Path, shots: Path
) -> None:
    from edgeslm.evaluate.task_results import TaskResult, save_task_result

    store = Store.open(measured / "models")
    q4 = store.get(parse_name(f"{MODEL}:q4_0"))
    save_task_result(store, TaskResult("b" * 32, "2026-01-01T00:00:00+00:00", "humaneval", "p/1", str(q4.name),
                                       q4.digest, 164, 20, 1.0, 4, ("pid",), ()))  # a kept pass@1 shows
    sign_in(driver, server.url, keys[1]["admin"])
    results = latest_results(store, store.manifests())
    rows = {r.get_attribute("data-model"): r.text for r in by_css(driver, f'section[data-family="{MODEL}"] tbody tr')}
    assert set(rows) == {str(m.name) for m in store.manifests() if m.name.base == MODEL}
    families = [f.get_attribute("data-family") for f in by_css(driver, "section.family")]
    assert families == ["gemma3-270m", MODEL]  # both builtins
    assert "No variant has quality results yet" in by_css(driver, 'section[data-family="gemma3-270m"]')[0].text
    for name in (f"{MODEL}:q4_0", f"{MODEL}:q8_0", f"{MODEL}:latest"):
        r = results[name]
        assert r.kld_mean is not None and r.speed is not None
        assert f"{r.kld_mean:.4f}" in rows[name] and f"{r.speed.tg_tps:.1f}" in rows[name], (name, rows[name])
    assert "reference" in rows[f"{MODEL}:f16"]
    assert "12.2 % of 164" in rows[f"{MODEL}:q4_0"] and "of 164" not in rows[f"{MODEL}:q8_0"]
    plot = by_css(driver, f'section[data-family="{MODEL}"] svg.pareto')[0]
    points = by_css(driver, f'section[data-family="{MODEL}"] svg.pareto .point')
    assert len(points) == len({r.model_digest for r in results.values() if r.kld_mean is not None})
    limits = plot.text
    assert "max size 95.0 MB" in limits and "max mean KLD 0.5" in limits
    from selenium.webdriver.common.action_chains import ActionChains

    q4 = next(p for p in points if f"{MODEL}:q4_0" in p.get_attribute("data-name"))
    ActionChains(driver).move_to_element(q4).perform()
    tip = wait_for("the hover box", lambda: [t for t in by_css(driver, ".plot .tip") if t.is_displayed()])[0]
    assert f"{results[f'{MODEL}:q4_0'].kld_mean:.4f}" in tip.text and "tok/s" in tip.text
    driver.save_screenshot(str(shots / "models-hover.png"))
    assert errors(driver) == []


def test_the_chat_streams_a_reply_stops_and_keeps_the_conversation(
    driver: Any, server: Served, keys: Any, shots: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    sign_in(driver, server.url, keys[1]["user"])
    visit(driver, server.url, "chat", "#chat-model option", shots)
    Select(by_css(driver, "#chat-model")[0]).select_by_value(f"{MODEL}:q4_0")
    for field, value in (("chat-temperature", "0"), ("chat-num_predict", "48")):
        box = by_css(driver, f"#{field}")[0]
        box.clear()
        box.send_keys(value)
    # every change of the reply's text, as the page makes it: proof that it arrives in pieces
    driver.execute_script("""
        window.__texts = [];
        new MutationObserver(() => {
          const md = document.querySelector('#chat-log .msg.assistant:last-child .md');
          if (md) window.__texts.push(md.textContent);
        }).observe(document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true});
    """)
    by_css(driver, "#chat-input")[0].send_keys("Write a haiku about the sea\n")
    stats = wait_for(
        "the reply's figures", lambda: [s for s in by_css(driver, "#chat-log .stats") if "tok/s" in s.text]
    )
    assert "time to first token" in stats[0].text and "48 tokens" in stats[0].text, stats[0].text
    texts = [t for t in driver.execute_script("return window.__texts") if t]
    assert len(set(texts)) >= 3 and texts[-1].strip(), texts[:5]
    assert all(texts[-1].startswith(t[: len(t) // 2]) for t in texts), "the reply was replaced, not grown"
    driver.save_screenshot(str(shots / "chat-reply.png"))

    box = by_css(driver, "#chat-num_predict")[0]
    box.clear()
    box.send_keys("2000")
    by_css(driver, "#chat-input")[0].send_keys("Tell me a very long story about a lighthouse keeper.\n")
    wait_for("the second reply to start", lambda: len(by_css(driver, "#chat-log .msg.assistant")) == 2
             and by_css(driver, "#chat-log .msg.assistant")[1].text.count(" ") > 3)
    by_css(driver, "#chat-stop")[0].click()
    wait_for("the stop", lambda: "stopped" in by_css(driver, "#chat-log .msg.assistant")[1].text)
    assert by_css(driver, "#chat-send")[0].is_enabled() and not by_css(driver, "#chat-stop")[0].is_enabled()
    wait_for("the server to free the slot", lambda: _busy(server, keys[1]["admin"]) == 0)

    driver.refresh()  # the conversation is this tab's
    wait_for("the kept conversation", lambda: len(by_css(driver, "#chat-log .msg")) == 4)
    assert errors(driver) == []
    visit(driver, server.url, "server", "#loaded tbody tr", shots)
    cards = by_css(driver, ".card")
    replies = next(c.text for c in cards if "Replies" in c.text)
    assert int(replies.split()[-1]) == 1  # the finished one (the stopped reply never finished)
    charts = " ".join(c.text for c in by_css(driver, ".charts svg"))
    assert "time to first token: –" not in charts and "per reply: –" not in charts, charts
    assert f"{MODEL}:q4_0" in by_css(driver, "#loaded")[0].text
    assert errors(driver) == []


def _server(server: Served, key: str) -> Any:
    return httpx.get(server.url + "/edgeslm/v1/server", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()


def _busy(server: Served, key: str) -> int:
    return int(_server(server, key)["slots_busy"])


def test_a_reader_sees_no_admin_controls_and_forged_calls_are_refused(
    driver: Any, server: Served, keys: Any, measured: Path
) -> None:
    driver.get(server.url + "/ui/#models")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    wait_for("the key prompt", lambda: by_css(driver, "dialog[open] #api-key"))[0].send_keys("esk-wrong\n")
    again = wait_for("the prompt again", lambda: [d for d in by_css(driver, "dialog[open]") if "not valid" in d.text])
    assert "Try again" in again[0].text and by_css(driver, "section.family") == []
    driver.get_log("browser")  # the 401 is logged as a failed load
    sign_in(driver, server.url, keys[1]["reader"])
    nav = [a.text for a in by_css(driver, "#nav a") if a.is_displayed()]
    assert nav == ["Models"]
    assert by_css(driver, "#pull-form") == [] and by_css(driver, "td.actions button") == []
    assert by_css(driver, 'main a[href^="#chat"]') == []  # no chat links in the table
    driver.get(server.url + "/ui/#audit")
    driver.refresh()
    wait_for("the models page instead", lambda: by_css(driver, "section.family"))
    assert by_css(driver, "#chain") == []
    before = sorted(p.name for p in (measured / "models" / "manifests").rglob("*.json"))
    forged = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const auth = {Authorization: 'Bearer ' + sessionStorage.getItem('edgeslm.key'),
                      'Content-Type': 'application/json'};
        const send = (path, method, body) => fetch(path, {method, headers: auth, body: JSON.stringify(body)});
        const calls = [
          send('/api/delete', 'DELETE', {model: 'smollm2-135m-instruct:q8_0'}),
          send('/api/pull', 'POST', {model: 'gemma3-270m'}),
          fetch('/edgeslm/v1/audit', {headers: auth}),
          send('/api/chat', 'POST', {model: 'smollm2-135m-instruct', messages: []}),
        ];
        Promise.all(calls.map(p => p.then(r => r.status))).then(done);
    """)
    assert forged == [403, 403, 403, 403]
    assert sorted(p.name for p in (measured / "models" / "manifests").rglob("*.json")) == before
    driver.get_log("browser")  # the refusals above are logged as failed loads, as they should be


def test_an_admin_copies_pulls_deletes_unloads_and_downloads_the_report(
    driver: Any, server: Served, keys: Any, measured: Path, shots: Path
) -> None:
    sign_in(driver, server.url, keys[1]["admin"])
    buttons = [b for b in by_css(driver, f'tr[data-model="{MODEL}:q8_0"] button') if b.text == "Delete"]
    buttons[0].click()
    dialog = wait_for("the confirmation", lambda: by_css(driver, "dialog[open]"))[0]
    assert f"will remove {MODEL}:q8_0, freeing 144.8 MB (1 blob(s))" in dialog.text and "Remove?" in dialog.text
    next(b for b in by_css(driver, "dialog[open] button") if b.text == "Cancel").click()
    assert Store.open(measured / "models").find(_name(f"{MODEL}:q8_0")) is not None
    by_css(driver, f'tr[data-model="{MODEL}:q8_0"] button.danger')[0].click()
    wait_for("the confirmation", lambda: by_css(driver, "dialog[open]"))
    next(b for b in by_css(driver, "dialog[open] button") if b.text == "Remove").click()
    wait_for("the row to go", lambda: not by_css(driver, f'tr[data-model="{MODEL}:q8_0"]'))
    assert Store.open(measured / "models").find(_name(f"{MODEL}:q8_0")) is None
    assert "deleted" in by_css(driver, ".status.ok")[0].text

    next(b for b in by_css(driver, f'tr[data-model="{MODEL}:q4_0"] button') if b.text == "Copy").click()
    field = wait_for("the copy dialog", lambda: by_css(driver, "dialog[open] input"))[0]
    field.clear()
    field.send_keys(f"{MODEL}:mine\n")
    wait_for("the copy's row", lambda: by_css(driver, f'tr[data-model="{MODEL}:mine"]'))
    store = Store.open(measured / "models")
    assert store.get(_name(f"{MODEL}:mine")).digest == store.get(_name(f"{MODEL}:q4_0")).digest
    by_css(driver, "#pull-form input")[0].send_keys("gemma3-270m\n")
    wait_for("the pull", lambda: "pulled gemma3-270m" in by_css(driver, "main .status")[0].text)

    visit(driver, server.url, "server", "#loaded tbody tr", shots)
    loaded = [r.get_attribute("data-model") for r in by_css(driver, "#loaded tbody tr")]
    by_css(driver, f'#loaded tr[data-model="{loaded[0]}"] button')[0].click()
    wait_for("the unload", lambda: loaded[0] not in [m["name"] for m in _server(server, keys[1]["admin"])["models"]])
    wait_for("the row to go", lambda: not by_css(driver, f'#loaded tr[data-model="{loaded[0]}"]'))

    driver.get(server.url + "/ui/#audit")
    driver.refresh()
    wait_for("the audit page", lambda: by_css(driver, "#audit-csv"))
    assert "DELETE" in by_css(driver, "#audit-recent")[0].text and "admin-1" in by_css(driver, "main")[0].text
    by_css(driver, "#audit-csv")[0].click()
    saved = wait_for("the download", lambda: list(driver.downloads.glob("*.csv")))
    text = saved[0].read_text()
    assert text.startswith("dimension,value,requests") and "key,reader-1," in text
    assert errors(driver) == []


def _name(text: str) -> Any:
    from edgeslm.store import parse_name

    return parse_name(text)


HOSTILE = (
    "Here: <img src=x onerror=\"window.__pwned='img'\"> and <script>window.__pwned='script'</script>\n\n"
    "**bold** and [a link](javascript:window.__pwned='link') and [ok](https://example.org/x)\n\n"
    "```html\n<iframe src=\"javascript:window.__pwned='frame'\"></iframe>\n```\n"
)


class HostileRunner(FakeRunner):
    """Replies with markup a model might be tricked into writing, in small pieces as tokens come."""

    async def agenerate(self, job: Any) -> Any:
        from edgeslm.runner import Chunk, Done

        pieces = [HOSTILE[i : i + 7] for i in range(0, len(HOSTILE), 7)]
        for i, piece in enumerate(pieces):
            yield Chunk(piece, 100 + i, None, (), piece)
        yield Done("stop", 3, len(pieces), 0.01, 0.02)


def test_a_hostile_reply_renders_as_text_and_runs_nothing(driver: Any, tmp_path: Path, cli: Any, home: Path) -> None:
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf")), "--name", "tiny").code == 0
    with serving(home, HostileRunner) as url:
        driver.get(url + "/ui/#chat")
        driver.execute_script("sessionStorage.clear()")
        driver.refresh()
        wait_for("the chat page", lambda: by_css(driver, "#chat-model option"))
        by_css(driver, "#chat-input")[0].send_keys("say something\n")
        wait_for("the reply", lambda: [s for s in by_css(driver, "#chat-log .stats") if "tokens" in s.text])
        log = by_css(driver, "#chat-log")[0]
        assert "<img src=x onerror=" in log.text and "<script>window.__pwned='script'</script>" in log.text
        assert "null" not in log.text and "undefined" not in log.text
        assert driver.execute_script("return window.__pwned === undefined")
        for tag in ("img", "script", "iframe"):
            assert by_css(driver, f"#chat-log {tag}") == [], tag
        assert [a.get_attribute("href") for a in by_css(driver, "#chat-log a")] == ["https://example.org/x"]
        assert by_css(driver, "#chat-log strong")[0].text == "bold"
        assert "<iframe" in by_css(driver, "#chat-log pre code")[0].text
        assert json.loads(driver.execute_script("return sessionStorage.getItem('edgeslm.chat')"))["messages"]
        assert errors(driver) == []
