"""What a validation run found: one CheckResult per expectation, the data profile, drift, and a verdict."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    suite: str  # corpus | general | classification | ner | drift
    name: str  # stable check name; recipe severity overrides use it
    expectation: str  # the GX expectation type that judged it
    severity: str  # "fail" stops the run, "warn" is only reported
    success: bool
    failing_count: int  # offending rows (or classes, tags) — 0 when it passed
    total: int  # rows (or classes, tags) judged
    examples: list[dict] = field(default_factory=list)  # up to 5 offending values with their row numbers
    reason: str = ""

    @property
    def status(self) -> str:
        if self.success:
            return "pass"
        return "fail" if self.severity == "fail" else "warn"


@dataclass(frozen=True)
class ValidationReport:
    success: bool  # no failing fail-severity check and drift not "fail"
    checks: list[CheckResult]
    profile: dict
    drift: dict | None = None
    data_docs: Path | None = None  # index.html of the Great Expectations Data Docs site
    # {"corpus": {rows, kept, empty, too_short, repeats}, "ner_tags": {"entity_types": [...], split: TagReading}}:
    # what training skips, and the NER tags read into IOB2
    cleaning: dict | None = None

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "warn"]

    def check(self, name: str, suite: str | None = None) -> CheckResult:
        """The result of one check (the first suite that has it, unless ``suite`` is given)."""
        for result in self.checks:
            if result.name == name and (suite is None or result.suite == suite):
                return result
        raise KeyError(f"no check named {name!r}" + (f" in suite {suite!r}" if suite else ""))

    def to_dict(self) -> dict:
        return _json_safe(
            {
                "success": self.success,
                "summary": self.summary(),
                "checks": [asdict(c) | {"status": c.status} for c in self.checks],
                "profile": self.profile,
                "drift": self.drift,
                "data_docs": str(self.data_docs) if self.data_docs else None,
                "cleaning": self.cleaning,
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> ValidationReport:
        """Rebuild a report from ``to_dict()`` output (e.g. validation.json or a flow's task result)."""
        fields = CheckResult.__dataclass_fields__
        checks = [CheckResult(**{k: v for k, v in c.items() if k in fields}) for c in data.get("checks", [])]
        docs = data.get("data_docs")
        return cls(
            success=bool(data["success"]),
            checks=checks,
            profile=data.get("profile") or {},
            drift=data.get("drift"),
            data_docs=Path(docs) if docs else None,
            cleaning=data.get("cleaning"),
        )

    def write_json(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path

    def write_html(self, path: Path, title: str = "Data validation") -> Path:
        """Every check as one HTML file that opens offline (unlike GX's Data Docs, which load CDN assets)."""
        return write_validation_html(self.to_dict(), path, title)

    def summary(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        parts = [
            f"{len(self.checks)} checks",
            f"{len(self.failures)} failed",
            f"{len(self.warnings)} warnings",
        ]
        if self.drift is not None:
            parts.append(f"drift {self.drift['status']} ({self.drift['distance']:.3f})")
        corpus = (self.cleaning or {}).get("corpus")
        if corpus and corpus["kept"] < corpus["rows"]:
            parts.append(
                f"corpus cleaned: {corpus['rows'] - corpus['kept']} of {corpus['rows']} lines dropped "
                f"({corpus['empty']} empty, {corpus['too_short']} too short, {corpus['repeats']} repeats)"
            )
        from models.data import TagReading

        tag_readings = dict((self.cleaning or {}).get("ner_tags") or {})
        entity_types = tag_readings.pop("entity_types", [])
        for split, reading in tag_readings.items():
            parts.append(f"{split} NER tags read as IOB2: {TagReading(**reading).summary(entity_types)}")
        line = f"data validation {verdict}: " + ", ".join(parts)
        if self.failures:
            line += " — failing: " + ", ".join(f"{c.suite}.{c.name}" for c in self.failures)
        return line

    def render(self, console: Any = None) -> None:
        """Print a table of every check and a one-line verdict on a rich Console."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title="Data validation", show_lines=False)
        for column in ("suite", "check", "status", "rows failing", "examples"):
            table.add_column(column, overflow="fold")
        styles = {"pass": "[green]pass[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
        for result in self.checks:
            failing = (
                f"{result.failing_count} / {result.total}" if result.total else str(result.failing_count)
            )
            examples = "; ".join(_example_text(e) for e in result.examples[:3])
            table.add_row(result.suite, result.name, styles[result.status], failing, examples)
        console.print(table)
        for result in self.failures:  # what the check guards against and how to fix it, beside its name
            if result.reason:
                console.print(f"[bold red]{result.suite}.{result.name}[/]: {result.reason}", highlight=False)
        if self.drift is not None:
            console.print(
                f"drift: {self.drift['status']} (distance {self.drift['distance']:.3f}, "
                f"worst {self.drift.get('worst')}, warn ≥ {self.drift['warn']}, fail ≥ {self.drift['fail']})"
            )
        if self.data_docs is not None:
            console.print(f"Data Docs: {self.data_docs}")
        console.print(("[green]" if self.success else "[bold red]") + self.summary() + "[/]")


def render_validation_html(report: dict, title: str = "Data validation") -> str:
    """An HTML fragment (no external asset, no script) with every check, drift and the profile, from
    ``ValidationReport.to_dict()`` output. The registry UI embeds it; ``write_validation_html`` makes it a file."""
    from html import escape

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, dict | list):
            return "<code>" + escape(json.dumps(value, sort_keys=True)[:300]) + "</code>"
        return escape("—" if value is None else str(value))

    checks = report.get("checks") or []
    verdict = "pass" if report.get("success") else "fail"
    parts = [
        f"<h1>{escape(title)}</h1>",
        f'<p><span class="pill {verdict}">{"PASSED" if report.get("success") else "FAILED"}</span> '
        f"{escape(str(report.get('summary') or ''))}</p>",
        '<table id="checks"><thead><tr><th>suite</th><th>check</th><th>expectation</th><th>severity</th>'
        '<th>status</th><th class="num">failing / total</th><th>examples</th><th>reason</th></tr></thead><tbody>',
    ]
    for check in checks:
        status = check.get("status") or ("pass" if check.get("success") else "fail")
        examples = "<br>".join(escape(_example_text(e)) for e in (check.get("examples") or [])[:5])
        parts.append(
            f'<tr class="check {escape(status)}-row"><td>{cell(check.get("suite"))}</td><td>{cell(check.get("name"))}</td>'
            f"<td><code>{cell(check.get('expectation'))}</code></td><td>{cell(check.get('severity'))}</td>"
            f'<td><span class="pill {escape(status)}">{escape(status)}</span></td>'
            f'<td class="num">{cell(check.get("failing_count"))} / {cell(check.get("total"))}</td>'
            f"<td>{examples}</td><td>{cell(check.get('reason'))}</td></tr>"
        )
    parts.append("</tbody></table>")
    drift = report.get("drift")
    if isinstance(drift, dict):
        parts.append('<h2>Drift against the production version\'s data</h2><table class="kv" id="drift">')
        parts += [f"<tr><th>{escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in drift.items()]
        parts.append("</table>")
    profile = report.get("profile")
    if isinstance(profile, dict) and profile:
        parts.append('<h2>Data profile</h2><table class="kv" id="profile">')
        parts += [f"<tr><th>{escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in sorted(profile.items())]
        parts.append("</table>")
    return "\n".join(parts)


def write_validation_html(report: dict, path: Path, title: str = "Data validation") -> Path:
    """The validation report as one HTML file that opens offline (stylesheet inlined, no CDN, no script)."""
    from models.htmlpage import standalone_page

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(standalone_page(title, render_validation_html(report, title)), encoding="utf-8")
    return path


class DataValidationError(Exception):
    """The data broke its contract; ``report`` holds every check (the flow stops on it)."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [report.summary()]
        for result in report.failures:
            example = f" e.g. {_example_text(result.examples[0])}" if result.examples else ""
            lines.append(
                f"  - {result.suite}.{result.name}: {result.failing_count}/{result.total} failing{example} "
                f"({result.reason})"
            )
        lines.append(
            "Fix the data, or relax the threshold / set validation.severity.<check>: warn in the recipe."
        )
        super().__init__("\n".join(lines))


def _example_text(example: dict) -> str:
    value = str(example.get("value", ""))
    value = value if len(value) <= 80 else value[:77] + "..."
    return f"row {example['row']}: {value}" if example.get("row") is not None else value


def _json_safe(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, infinities and NaN to None, paths to strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
