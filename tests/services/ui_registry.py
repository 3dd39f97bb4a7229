"""A registry with tiny versions whose evidence has the shape the retrain flow writes (per-class and per-slice
metrics, parity per variant, forgetting, validation checks, lineage with a run folder) and real plots."""

from __future__ import annotations

from pathlib import Path

from expectations.report import CheckResult, ValidationReport, write_validation_html
from models.recipe import GateConfig
from models.registry.store import Registry
from tests.models.test_registry import make_bundle, make_evidence

LABELS = ["negative", "neutral", "positive"]


def validation_dict(success: bool = True) -> dict:
    checks = [
        CheckResult("corpus", "not_empty", "expect_table_row_count_to_be_between", "fail", True, 0, 80),
        CheckResult(
            "corpus",
            "mojibake",
            "expect_column_values_to_not_match_regex",
            "warn",
            False,
            1,
            80,
            [{"row": 17, "value": "CafÃ© earnings"}],
            "mojibake or control characters",
        ),
        CheckResult(
            "classification",
            "label_set",
            "expect_column_values_to_be_in_set",
            "fail",
            success,
            0 if success else 2,
            60,
        ),
    ]
    return ValidationReport(success=success, checks=checks, profile={"rows": 60, "classes": 3}).to_dict()


def ui_evidence(macro_f1: float, run_dir: Path, **extra) -> dict:
    evidence = make_evidence(macro_f1, run_id=run_dir.name)
    evidence["evaluation"] = {
        "accuracy": macro_f1 + 0.03,
        "macro_f1": macro_f1,
        "per_class": {
            label: {
                "precision": macro_f1 - i / 100,
                "recall": macro_f1 + i / 100,
                "f1": macro_f1 + i / 200,
                "support": 20,
            }
            for i, label in enumerate(LABELS)
        },
        "per_slice": {
            "newswire": {"accuracy": 0.9, "macro_f1": macro_f1, "n": 30},
            "blogs": {"accuracy": 0.7, "macro_f1": 0.6, "n": 30},
        },
    }
    evidence["parity"]["int8"] = {"max_abs_diff": 0.06, "label_agreement": 0.98, "passed": True}
    evidence["validation"] = validation_dict()
    evidence["adaptation"] = {"strategy": "dapt", "steps": 40, "domain_loss_after": 2.1, "log": [{"step": 1}]}
    evidence["adaptation_gain"] = {
        "method": "probe",
        "metric": "macro_f1",
        "base": 0.71,
        "adapted": 0.69,
        "gain": -0.02,
        "min_gain": 0.0,
        "kept": "base",
        "summary": "adaptation gain (probe, validation macro_f1): base 0.7100, adapted 0.6900, gain -0.0200 "
        "(needs >= +0.0000); adaptation did not help: fine-tuning the base encoder instead",
    }
    evidence["lineage"]["run_dir"] = str(run_dir)
    evidence.update(extra)
    return evidence


def populate(root: Path, registry: Registry | None = None) -> Registry:
    """finsent v1 (promoted), v2 (promoted over v1), v3 (refused by the gate); newsner v1 (no alias).
    Sources and run folders go under ``root``; the versions into ``registry`` (default: one under ``root``)."""
    from models.evaluation.plots import plot_confusion_matrix, plot_reliability

    registry = registry or Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    for version, f1 in enumerate((0.80, 0.86, 0.50), start=1):
        run_dir = root / "runs" / f"run-{version}"
        (run_dir / "validation").mkdir(parents=True, exist_ok=True)
        (run_dir / "report.html").write_text(
            f"<!doctype html><h1>finsent v{version} run report</h1>", encoding="utf-8"
        )
        (run_dir / "report.md").write_text(f"# finsent v{version}\n", encoding="utf-8")
        write_validation_html(validation_dict(), run_dir / "validation" / "report.html")
        bundle = make_bundle(root / f"src{version}")
        plot_confusion_matrix(
            [[18, 1, 1], [2, 15, 3], [0, 2, 18 - version]],
            LABELS,
            bundle / "reports" / "confusion_matrix.png",
        )
        bins = [
            {
                "lower": i / 10,
                "upper": (i + 1) / 10,
                "count": 5,
                "confidence": i / 10 + 0.05,
                "accuracy": i / 10,
            }
            for i in range(10)
        ]
        plot_reliability(bins, 0.05, bundle / "reports" / "reliability.png")
        mv = registry.register("finsent", bundle, ui_evidence(f1, run_dir))
        registry.promote("finsent", mv.version, gate=GateConfig(min_value=0.6), actor="tester")
    ner_run = root / "runs" / "ner-1"
    ner_run.mkdir(parents=True, exist_ok=True)
    registry.register(
        "newsner",
        make_bundle(root / "src-ner"),
        ui_evidence(0.7, ner_run, metrics={"entity_f1": 0.71, "macro_f1": 0.7, "eval_loss": 0.4}),
    )
    return registry
