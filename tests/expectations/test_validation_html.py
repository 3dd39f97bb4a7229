"""The validation report as HTML that opens offline: every check with its status and examples, no CDN asset,
no script; written by `dapt validate` (and by the flow) next to GX's Data Docs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from expectations.report import CheckResult, ValidationReport, write_validation_html

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def report(success: bool = False) -> ValidationReport:
    return ValidationReport(
        success=success,
        checks=[
            CheckResult("corpus", "not_empty", "expect_table_row_count_to_be_between", "fail", True, 0, 80),
            CheckResult(
                "classification",
                "conflicting_labels",
                "expect_column_values_to_be_unique",
                "fail",
                success,
                0 if success else 2,
                60,
                [{"row": 4, "value": "<b>Shares</b> jumped"}],
                "same text, different labels",
            ),
        ],
        profile={"rows": 60},
        drift={"status": "warn", "distance": 0.21, "warn": 0.2, "fail": 0.4, "worst": "length"},
    )


def test_html_report_lists_every_check_status_and_example_and_loads_nothing(tmp_path):
    path = report().write_html(tmp_path / "report.html", "Data validation — finsent")
    html = path.read_text(encoding="utf-8")
    assert "Data validation — finsent" in html and "FAILED" in html
    rows = html.split('id="checks"', 1)[1].split("</table>", 1)[0].split("<tr")[2:]
    assert len(rows) == 2
    assert "not_empty" in rows[0] and ">pass<" in rows[0]
    assert "conflicting_labels" in rows[1] and ">fail<" in rows[1] and "2 / 60" in rows[1]
    assert "row 4: &lt;b&gt;Shares&lt;/b&gt; jumped" in rows[1]  # data is escaped, not rendered
    assert 'id="drift"' in html and "0.2100" in html
    assert "<style>" in html and "<script" not in html and not OUTSIDE.search(html)


def test_report_dict_round_trip_renders_the_same_checks(tmp_path):
    html = write_validation_html(report(True).to_dict(), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "PASSED" in html and html.count('class="check ') == 2


def test_dapt_validate_writes_the_offline_report_and_prints_its_path(tmp_path, sample_dir, tiny_base_model):
    from tests.tiny_recipe import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model)
    env = os.environ | {"DAPT_HOME": str(tmp_path / "home"), "COLUMNS": "250"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "dapt.cli", "validate", str(recipe)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(
        r"Validation report \(opens offline\): (\S+report\.html)", result.stdout.replace("\n", "")
    )
    assert match, result.stdout
    html = Path(match.group(1)).read_text(encoding="utf-8")
    assert "PASSED" in html and "data_readable" in html
    assert html.count('class="check ') >= 5 and not OUTSIDE.search(html)
