"""The registry UI on a version registered by the real retrain flow (tiny data): the run folder holds
report.md, report.html and an offline validation report, and every UI page shows the real evidence."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from tests.tiny_recipe import write_tiny_recipe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

OUTSIDE = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def test_a_real_run_writes_its_reports_and_the_ui_shows_its_evidence(
    tmp_path, sample_dir, tiny_base_model, prefect_harness
):
    from dapt.cli.app import run_recipe
    from models.registry.store import Registry
    from services.ui import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    summary = run_recipe(write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model, name="uirun"))
    run_dir = Path(summary["files"]["run"])

    # the Prefect report, as files next to the run
    report_md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert f"# uirun v{summary['version']}" in report_md and "macro_f1" in report_md
    assert "![confusion_matrix](bundle/reports/confusion_matrix.png)" in report_md
    assert (run_dir / "bundle" / "reports" / "confusion_matrix.png").is_file()  # the relative link resolves
    report_html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<table>" in report_html and 'src="data:image/png;base64,' in report_html
    assert not OUTSIDE.search(report_html)

    # the validation report opens offline and lists the checks
    validation_html = (run_dir / "validation" / "report.html").read_text(encoding="utf-8")
    checks = Registry().get_version("uirun", summary["version"]).evidence["validation"]["checks"]
    assert checks and all(check["name"] in validation_html for check in checks)
    assert "<script" not in validation_html and not OUTSIDE.search(validation_html)

    client = TestClient(create_app(Registry(), admin_token=""))
    version = summary["version"]
    page = client.get(f"/models/uirun/{version}").text
    for text in ("Metrics per class", "Metrics per slice", "fp32", "int8", "Adaptation gain", "Model card"):
        assert text in page, text
    plots = re.findall(rf'src="(/models/uirun/{version}/files/reports/[^"]+\.png)"', page)
    assert any("confusion_matrix" in p for p in plots) and any("reliability" in p for p in plots)
    for plot in plots:
        response = client.get(plot)
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    for link in ("report.html", "report.md", "validation/report.html"):
        assert f'href="/models/uirun/{version}/run/{link}"' in page
        assert client.get(f"/models/uirun/{version}/run/{link}").status_code == 200
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" not in page  # tiny base: a local path
    assert "model-index" in page and "eval_results" not in page  # the card metadata block, HF schema
    assert client.get(f"/models/uirun/{version}/validation").status_code == 200
    assert "uirun" in client.get("/").text
