"""The registry UI in a real headless Chromium: every page opens, shows its content, every image loads, and no
request leaves 127.0.0.1. Driven over the DevTools protocol; screenshots are kept as test artifacts.

Chromium comes from Debian (`scripts/ensure-chromium.sh` installs it); without it these tests skip, saying so.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.services.test_ui import _free_port, start_ui, stop, wait_up

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# page -> texts the rendered page must show (names, versions, metrics) and the least number of images on it
PAGES = {
    "/": (["finsent", "newsner", "production → v2", "0.5000"], 0),
    "/models/finsent": (["v1", "v2", "v3", "0.8600", "refused (production)", "Alias history"], 0),
    "/models/finsent/2": (["finsent v2", "neutral", "0.8650", "int8", "0.9800", "3 checks", "Model card"], 2),
    "/models/finsent/diff/1/2": (["v1 vs v2", "+0.0600", "lineage.run_dir"], 4),
    "/models/finsent/2/validation": (["Data validation", "mojibake", "row 17"], 0),
    "/models/newsner/1": (["newsner v1", "entity_f1", "0.7100"], 0),
}


def find_chromium() -> str | None:
    for name in (os.environ.get("DAPT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """One headless Chromium with one tab, driven through the DevTools protocol over a websocket."""

    def __init__(self, binary: str, profile: Path):
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {self.process.stderr.read()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        self.socket = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []
        self.call("Page.enable")
        self.call("Network.enable")

    def call(self, method: str, timeout_s: float = 60, **params) -> dict:
        self.next_id += 1
        ident = self.next_id
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
        raise TimeoutError(f"{method} got no answer in {timeout_s} s")

    def wait_event(self, method: str, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic()))))
        raise TimeoutError(f"no {method} within {timeout_s} s")

    def open(self, url: str) -> list[str]:
        """Navigate, wait for the load event, and return every URL the page requested."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium found (looked for $DAPT_CHROMIUM, chromium, chromium-browser, google-chrome-stable): "
            "run scripts/ensure-chromium.sh to install Debian's chromium"
        )
    profile = Path(tempfile.mkdtemp(prefix="dapt-chromium-"))
    try:
        instance = Browser(binary, profile)
    except Exception as error:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium at {binary} cannot start headless here: {error}")
    yield instance
    instance.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory) -> Path:
    from tests.services.ui_registry import populate

    root = tmp_path_factory.mktemp("ui_browser_registry")
    populate(root).dispose()
    return root


@pytest.fixture(scope="module")
def live_ui(registry_root):
    root = registry_root
    port = _free_port()
    process = start_ui(root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/", process)
        yield url
    finally:
        stop(process)


def test_every_page_renders_in_chromium_with_its_content_images_and_no_outside_request(
    browser, live_ui, tmp_path_factory
):
    shots = tmp_path_factory.mktemp("ui_screenshots")
    for page, (texts, min_images) in PAGES.items():
        requested = browser.open(live_ui + page)
        outside = [u for u in requested if not u.startswith((live_ui + "/", "data:"))]
        assert not outside, f"{page} requested {outside}"
        assert live_ui + "/static/style.css" in requested, page  # the stylesheet really loaded
        text = browser.evaluate("document.body.innerText")
        for expected in texts:
            assert expected in text, f"{expected!r} missing on {page}"
        images = browser.evaluate(
            "[...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}))"
        )
        assert len(images) >= min_images, page
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"images that did not load on {page}: {broken}"
        for image in images:
            assert image["src"].startswith("/models/"), image  # relative to this server
        styled = browser.evaluate("getComputedStyle(document.querySelector('header.top')).backgroundColor")
        assert styled == "rgb(17, 24, 39)", page  # the local stylesheet applied
        name = page.strip("/").replace("/", "_") or "index"
        path = browser.screenshot(shots / f"{name}.png")
        assert path.stat().st_size > 5000
    print(f"[ui] screenshots: {shots}")


def test_plot_endpoints_answer_png_that_chromium_decodes(browser, live_ui):
    browser.open(live_ui + "/models/finsent/2")
    sizes = browser.evaluate(
        "Promise.all([...document.images].map(i => i.decode().then(() => [i.getAttribute('src'), i.naturalWidth])))"
    )
    assert len(sizes) >= 2 and all(width > 100 for _, width in sizes)
    for src, _ in sizes:
        response = httpx.get(live_ui + src, timeout=10)
        assert response.headers["content-type"] == "image/png"


def test_admin_forms_are_absent_in_the_read_only_browser_view(browser, live_ui):
    browser.open(live_ui + "/models/finsent")
    assert browser.evaluate("document.querySelectorAll('form[method=post]').length") == 0
    assert "read-only" in browser.evaluate("document.querySelector('header.top').innerText")


def test_validation_report_file_opens_offline_from_disk_and_shows_its_checks(browser, registry_root):
    report = registry_root / "runs" / "run-2" / "validation" / "report.html"
    requested = browser.open(report.as_uri())
    assert all(url.startswith(("file://", "data:")) for url in requested), requested
    rows = browser.evaluate("[...document.querySelectorAll('#checks tbody tr')].map(r => r.innerText)")
    assert len(rows) == 3 and any("mojibake" in row and "warn" in row for row in rows)
    # the inlined stylesheet applied: a status pill has its colour without any network
    assert (
        browser.evaluate("getComputedStyle(document.querySelector('.pill.warn')).color") == "rgb(138, 90, 0)"
    )
