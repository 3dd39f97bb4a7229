"""`dapt ui`: every page over Starlette's TestClient on a populated registry, the admin forms with their token
and CSRF checks, file verification, and the `dapt ui` console script serving over HTTP on 127.0.0.1."""

from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest

with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2; the httpx client works the same
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from services.ui import create_app
from services.ui.app import CSRF_COOKIE
from tests.services.helpers import corrupt, registry_env
from tests.services.ui_registry import populate

REPO = Path(__file__).resolve().parents[2]
PAGES = [
    "/",
    "/models/finsent",
    "/models/finsent?sort=macro_f1&order=asc",
    "/models/finsent/2",
    "/models/finsent/diff/1/2",
    "/models/finsent/2/validation",
    "/models/newsner/1",
]
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ui_registry")
    populate(root).dispose()
    return root


@pytest.fixture()
def registry(populated):
    from tests.services.helpers import tmp_registry

    return tmp_registry(populated)


@pytest.fixture()
def client(registry) -> TestClient:
    return TestClient(create_app(registry, admin_token=""))


def rows(html: str, table_id: str) -> list[str]:
    """The rows of one table (as HTML snippets) of a page."""
    table = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return table.split("<tr")[1:]


# ------------------------------------------------------------------------------------------------ pages
def test_index_lists_each_model_with_aliases_latest_metrics_and_status(client):
    page = client.get("/")
    assert page.status_code == 200
    finsent, newsner = rows(page.text, "models")[1:]
    assert "finsent" in finsent and "production → v2" in finsent and "v3" in finsent  # latest is v3
    assert "0.5000" in finsent  # v3's macro_f1: the latest version's metrics
    assert "newsner" in newsner and "not in production" in newsner and "0.7000" in newsner


def test_model_page_lists_versions_with_aliases_fingerprint_and_gate_decision(client):
    page = client.get("/models/finsent").text
    versions = rows(page, "versions")[1:]
    assert [re.search(r'data-version="(\d+)"', r).group(1) for r in versions] == ["3", "2", "1"]
    v3, v2, _ = versions
    assert "refused (production)" in v3 and "below the floor 0.6000" in v3
    assert "production" in v2 and "passed (production)" in v2 and "0.8600" in v2
    assert "abababababab" in v2  # data fingerprint prefix
    audit = rows(page, "audit")[1:]
    assert len(audit) == 3 and "refused" in audit[0] and "v1 → " in audit[1]


def test_versions_sort_by_metric_and_created_and_refuse_unknown_keys(client):
    def order(url: str) -> list[str]:
        return re.findall(r'data-version="(\d+)"', client.get(url).text)

    assert order("/models/finsent?sort=macro_f1&order=asc") == ["3", "1", "2"]
    assert order("/models/finsent?sort=macro_f1&order=desc") == ["2", "1", "3"]
    assert order("/models/finsent?sort=created&order=asc") == ["1", "2", "3"]
    bad = client.get("/models/finsent?sort=colour")
    assert bad.status_code == 400 and "cannot sort by" in bad.text and "macro_f1" in bad.text
    assert client.get("/models/finsent?order=sideways").status_code == 400


def test_version_page_shows_every_piece_of_evidence_plots_and_the_card(client):
    page = client.get("/models/finsent/2").text
    per_class = rows(page, "eval-per-class")
    assert any("neutral" in r and "0.8650" in r for r in per_class)
    assert any("blogs" in r and "0.6000" in r for r in rows(page, "eval-per-slice"))
    assert any("int8" in r and "0.9800" in r for r in rows(page, "parity"))
    assert any("delta" in r and "0.0400" in r for r in rows(page, "forgetting"))
    assert "0.9000</strong> nats lower" in page  # domain MLM loss 3.0 -> 2.1
    task_gain = page.split('id="adaptation-task-gain"', 1)[1].split("</p>", 1)[0]
    assert "-0.0200" in task_gain and "<strong>base</strong> encoder was fine-tuned" in task_gain
    adaptation = "".join(rows(page, "adaptation"))
    assert "strategy" in adaptation and "dapt" in adaptation and "log" not in adaptation  # scalars only
    assert "3 checks: 2 pass, 1 warn, 0 fail" in page
    assert 'href="/models/finsent/2/validation"' in page
    assert any("run_dir" in r for r in rows(page, "lineage"))
    assert 'href="/models/finsent/2/run/report.html"' in page
    for plot in ("confusion_matrix.png", "reliability.png"):
        assert f'src="/models/finsent/2/files/reports/{plot}"' in page
    card = page.split('id="model-card"', 1)[1]
    assert "<h1>finsent v2</h1>" in card and "<table>" in card  # markdown rendered, tables included


def test_plots_are_served_as_png_from_the_verified_version_folder(client, registry):
    for plot in ("confusion_matrix.png", "reliability.png"):
        response = client.get(f"/models/finsent/1/files/reports/{plot}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert client.get("/models/finsent/1/files/onnx/fp32/model.onnx").status_code == 404  # not a served type
    assert client.get("/models/finsent/1/files/reports/nothere.png").status_code == 404  # not in manifest
    # only paths listed in the manifest are served: no way out of the version folder
    escape = client.get("/models/finsent/1/files/reports%2F..%2F..%2F..%2F..%2Fregistry.json")
    assert escape.status_code == 404 and "not in its manifest" in escape.text


def test_a_changed_plot_is_refused_not_served(tmp_path):
    registry = populate(tmp_path)
    client = TestClient(create_app(registry, admin_token=""))
    corrupt(registry.get_version("finsent", 1).path / "reports" / "reliability.png")
    response = client.get("/models/finsent/1/files/reports/reliability.png")
    assert response.status_code == 409 and "changed since registration" in response.text
    corrupt(registry.get_version("finsent", 2).path / "README.md")
    page = client.get("/models/finsent/2")
    assert page.status_code == 200 and 'id="card-error"' in page.text and 'id="model-card"' not in page.text


def test_diff_page_puts_two_versions_side_by_side(client):
    page = client.get("/models/finsent/diff/1/2").text
    macro = next(r for r in rows(page, "diff-metrics") if "macro_f1" in r)
    assert "0.8000" in macro and "0.8600" in macro and "+0.0600" in macro and "delta-up" in macro
    assert 'src="/models/finsent/1/files/reports/confusion_matrix.png"' in page
    assert 'src="/models/finsent/2/files/reports/confusion_matrix.png"' in page
    assert any("lineage.run_dir" in r for r in rows(page, "diff-evidence"))
    redirect = client.get("/models/finsent/compare?a=1&b=3", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"] == "/models/finsent/diff/1/3"


def test_validation_report_page_lists_every_check(client):
    page = client.get("/models/finsent/2/validation").text
    checks = rows(page, "checks")[1:]
    assert len(checks) == 3
    assert any("mojibake" in r and "warn" in r and "row 17" in r for r in checks)
    assert any("label_set" in r and "pass" in r for r in checks)


def test_run_report_files_are_served_and_nothing_else_from_the_run_folder(client):
    response = client.get("/models/finsent/2/run/report.html")
    assert response.status_code == 200 and "finsent v2 run report" in response.text
    offline = client.get("/models/finsent/2/run/validation/report.html")
    assert offline.status_code == 200 and "mojibake" in offline.text
    assert client.get("/models/finsent/2/run/summary.json").status_code == 404


def test_unknown_models_versions_and_bad_numbers_answer_4xx_with_the_reason(client):
    missing = client.get("/models/nosuch")
    assert missing.status_code == 404 and "no model named 'nosuch'" in html.unescape(missing.text)
    gone = client.get("/models/finsent/9")
    assert gone.status_code == 404 and "versions: 1, 2, 3" in gone.text
    assert client.get("/models/finsent/two").status_code == 400
    assert client.get("/models/Bad.Name").status_code == 400


def test_pages_reference_nothing_outside_this_server(client):
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, url
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert not EXTERNAL.findall(response.text), url


def test_model_card_html_is_escaped_not_executed(tmp_path):
    from tests.models.test_registry import make_bundle
    from tests.services.ui_registry import ui_evidence

    registry = populate(tmp_path)
    evil = ui_evidence(0.9, tmp_path / "runs" / "evil", intended_use="<script>alert(1)</script> **bold**")
    registry.register("finsent", make_bundle(tmp_path / "evil"), evil)
    page = TestClient(create_app(registry, admin_token="")).get("/models/finsent/4").text
    assert "<script>" not in page and "&lt;script&gt;" in page and "<strong>bold</strong>" in page


# ------------------------------------------------------------------------------------------------ admin
def test_read_only_by_default_no_forms_and_posts_refused(client, registry):
    page = client.get("/models/finsent").text
    assert "<form" in page and 'method="post"' not in page  # only the compare form
    response = client.post("/models/finsent/promote", data={"version": "1", "token": "x", "csrf": "y"})
    assert response.status_code == 403 and "DAPT_ADMIN_TOKEN" in response.text
    assert registry.aliases("finsent") == {"production": 2}


def test_admin_promote_and_rollback_need_the_token_and_the_csrf_cookie(tmp_path):
    registry = populate(tmp_path)
    client = TestClient(create_app(registry, admin_token="s3cret"))
    page = client.get("/models/finsent")
    csrf = page.cookies[CSRF_COOKIE]
    assert f'name="csrf" value="{csrf}"' in page.text and "s3cret" not in page.text

    def post(action: str, **fields: str) -> httpx.Response:
        return client.post(f"/models/finsent/{action}", data=fields, follow_redirects=False)

    no_csrf = post("promote", version="1", token="s3cret", csrf="forged")
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    wrong = post("promote", version="1", token="guess", csrf=csrf)
    assert wrong.status_code == 403 and "wrong admin token" in wrong.text
    foreign = client.post(
        "/models/finsent/promote",
        data={"version": "1", "token": "s3cret", "csrf": csrf},
        headers={"Origin": "http://evil.example"},
    )
    assert foreign.status_code == 403
    assert registry.aliases("finsent") == {"production": 2}

    refused = post("promote", version="3", token="s3cret", csrf=csrf)  # 0.50 < incumbent 0.86
    assert refused.status_code == 409 and "gate refused" in refused.text
    assert registry.aliases("finsent") == {"production": 2}

    forced = post("promote", version="3", token="s3cret", csrf=csrf, force_reason="hotfix for a demo")
    assert forced.status_code == 303 and registry.aliases("finsent") == {"production": 3}
    last = registry.audit_log("finsent")[-1]
    assert last.kind == "force" and last.reason == "hotfix for a demo" and last.actor.startswith("ui:")

    back = post("rollback", alias="production", token="s3cret", csrf=csrf)
    assert back.status_code == 303 and registry.aliases("finsent") == {"production": 2}
    assert "rolled back" in client.get(back.headers["location"]).text


# ------------------------------------------------------------------------------------------------ live
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dapt_command() -> list[str]:
    script = Path(sys.executable).with_name("dapt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dapt.cli"]


def ui_env(root: Path, **extra: str) -> dict[str, str]:
    env = os.environ | registry_env(root) | extra
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if "DAPT_ADMIN_TOKEN" not in extra:
        env.pop("DAPT_ADMIN_TOKEN", None)
    return env


def start_ui(root: Path, port: int, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*dapt_command(), "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=ui_env(root, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_up(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dapt ui exited with {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"dapt ui did not answer at {url} within {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_dapt_ui_serves_the_registry_over_http_on_loopback(populated):
    port = _free_port()
    process = start_ui(populated, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/", process)
        for page in PAGES:
            response = httpx.get(url + page, timeout=10)
            assert response.status_code == 200, page
        assert "finsent" in httpx.get(url + "/").text
        plot = httpx.get(url + "/models/finsent/2/files/reports/confusion_matrix.png")
        assert plot.headers["content-type"] == "image/png"
        assert httpx.post(url + "/models/finsent/rollback", data={"token": "x"}).status_code == 403
    finally:
        stop(process)
    assert "read-only" in process.stdout.read()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_dapt_ui_on_a_busy_port_exits_2_naming_the_port(populated):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*dapt_command(), "ui", "--port", str(port)],
            cwd=REPO,
            env=ui_env(populated),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stderr and "--port" in result.stderr
