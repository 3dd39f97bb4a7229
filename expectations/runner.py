"""Run the data contracts on a recipe's data with Great Expectations and report what they found.

Flow: read each file with models/data.py → derive the judged columns with pandas (expectations/derived.py)
→ one GX ExpectationSuite per suite and frame, run through a ValidationDefinition on an ephemeral context
→ CheckResults (with offending rows named) → profile + drift → validation.json and static Data Docs.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expectations.report import CheckResult, ValidationReport
from expectations.suites import Suite, quiet_gx_logging, severity_for, unknown_severity_keys
from models.progress import staged

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import Recipe, ValidationConfig

logger = logging.getLogger("dapt.expectations")

MAX_EXAMPLES = 5
# Reading errors that mean "this data cannot be used as the recipe says" (not a bug in dapt).
_READ_ERRORS = (ValueError, OSError, KeyError, TypeError, UnicodeDecodeError)


def _gx_context(docs_dir: Path | None):
    """An in-memory GX context (no gx/ folder, no analytics) with one filesystem Data Docs site."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["dapt"] = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suites(
    runs: list[tuple[Suite, dict[str, pd.DataFrame]]], cfg: ValidationConfig, docs_dir: Path | None = None
) -> tuple[list[CheckResult], Path | None]:
    """Validate each suite's frames with GX; return one CheckResult per check and the Data Docs index."""
    quiet_gx_logging()
    import great_expectations as gx

    if docs_dir is not None and docs_dir.exists():
        shutil.rmtree(docs_dir)  # a re-run replaces the site instead of listing stale validations beside it
    context = _gx_context(docs_dir)
    source = context.data_sources.add_pandas("dapt")
    results: list[CheckResult] = []
    for suite, frames in runs:
        for frame_name, frame in frames.items():
            checks = [c for c in suite.checks if c.frame == frame_name]
            if not checks:
                continue
            gx_name = suite.name if frame_name in ("rows", "sentences") else f"{suite.name}_{frame_name}"
            started = time.perf_counter()
            batch = source.add_dataframe_asset(gx_name).add_batch_definition_whole_dataframe("whole")
            gx_suite = context.suites.add(gx.ExpectationSuite(name=gx_name))
            for check in checks:
                gx_suite.add_expectation(check.expectation)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=gx_name, data=batch, suite=gx_suite)
            )
            outcome = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
            by_check = {r.expectation_config.meta.get("check"): r for r in outcome.results}
            for check in checks:
                results.append(_check_result(suite.name, check, by_check[check.name], frame, cfg))
            logger.info(
                "validated %s (%d rows, %d checks) in %.2fs",
                gx_name,
                len(frame),
                len(checks),
                time.perf_counter() - started,
            )
    index = None
    if docs_dir is not None:
        started = time.perf_counter()
        try:
            context.build_data_docs(site_names=["dapt"])
            index = docs_dir / "index.html"
        except Exception as exc:  # the report stands without the HTML; say why it is missing
            logger.warning("could not build Great Expectations Data Docs in %s: %s", docs_dir, exc)
        logger.info("built Data Docs in %.2fs", time.perf_counter() - started)
    return results, index


def _check_result(suite: str, check, outcome, frame: pd.DataFrame, cfg: ValidationConfig) -> CheckResult:
    result = outcome.result or {}
    expectation = outcome.expectation_config.type
    severity = severity_for(cfg, suite, check.name)
    raised = (outcome.exception_info or {}).get("raised_exception")
    if raised:
        message = (outcome.exception_info or {}).get("exception_message") or "expectation raised an error"
        return CheckResult(
            suite,
            check.name,
            expectation,
            severity,
            False,
            len(frame),
            len(frame),
            [{"row": None, "value": message}],
            check.reason,
        )
    total = int(result.get("element_count", len(frame)))
    if "unexpected_count" in result:
        failing = int(result["unexpected_count"])
    else:
        failing = 0 if outcome.success else 1
    success = bool(outcome.success)
    if check.cleanable and failing and success:
        # under its cap: the rows are dropped before training, which the report shows as a warning
        success, severity = False, "warn"
    examples = []
    for index in (result.get("partial_unexpected_index_list") or [])[:MAX_EXAMPLES]:
        examples.append(_example(frame.loc[index], check.show))
    if not examples and not success and "observed_value" in result:
        examples.append({"row": None, "value": f"observed {result['observed_value']}"})
    return CheckResult(
        suite,
        check.name,
        expectation,
        severity,
        success,
        failing,
        total,
        examples,
        check.reason,
    )


def _example(row: pd.Series, show: str | Callable[[pd.Series], Any]) -> dict:
    value = show(row) if callable(show) else row[show]
    row_number = row.get("row")
    example = {"row": None if row_number is None else int(row_number), "value": str(value)}
    if "split" in row.index:
        example["split"] = str(row["split"])
    return example


def _read(what: str, suite: str, load: Callable[[], Any], checks: list[CheckResult]) -> Any | None:
    """Load one data file; an unreadable file becomes a failed ``data_readable`` check, not an exception."""
    reason = f"{what} must be readable as the recipe says"
    try:
        data = load()
    except _READ_ERRORS as exc:
        message = str(exc) or type(exc).__name__
        logger.error("cannot read %s: %s", what, message)
        examples = [{"row": None, "value": message}]
        checks.append(CheckResult(suite, "data_readable", "read", "fail", False, 1, 1, examples, reason))
        return None
    checks.append(CheckResult(suite, "data_readable", "read", "fail", True, 0, len(data), [], reason))
    return data


def _base_model_dir(recipe: Recipe) -> Path | None:
    try:
        return recipe.resolved_base_model()
    except ImportError:  # no shipped base model: count whitespace words instead of subword tokens
        return None


@dataclass
class _Gathered:
    """What reading the recipe's data gathers for the suites: failed reads, suite runs and the data profile."""

    counter: Any
    checks: list[CheckResult] = field(default_factory=list)
    runs: list[tuple[Suite, dict[str, pd.DataFrame]]] = field(default_factory=list)
    profile: dict = field(default_factory=dict)
    # split -> TagReading.to_dict(), for the NER files whose tags were read into IOB2
    tag_readings: dict = field(default_factory=dict)


def _gather_corpus(recipe: Recipe, gathered: _Gathered) -> dict | None:
    """The corpus suite's rows and the profile of the cleaned corpus; returns the cleaning summary."""
    from expectations.derived import corpus_frame
    from expectations.drift import profile_data
    from expectations.suites import corpus_suite
    from models.data import DROP_EMPTY, DROP_REPEAT, DROP_SHORT, CorpusCleaning, read_corpus

    cfg, data, counter = recipe.validation, recipe.data, gathered.counter
    corpus = _read(
        "corpus", "corpus", lambda: read_corpus(data.corpus, data.corpus_text_column), gathered.checks
    )
    if corpus is None:
        return None
    logger.info("corpus: %d documents", len(corpus))
    frame = corpus_frame(corpus, counter, min_chars=cfg.min_chars)
    gathered.runs.append((corpus_suite(cfg), {"rows": frame}))
    kept = frame["drop_reason"] == ""
    reasons = frame["drop_reason"].value_counts()
    cleaned = CorpusCleaning(
        rows=len(frame),
        kept=int(kept.sum()),
        empty=int(reasons.get(DROP_EMPTY, 0)),
        too_short=int(reasons.get(DROP_SHORT, 0)),
        repeats=int(reasons.get(DROP_REPEAT, 0)),
    )
    if cleaned.kept < cleaned.rows:
        logger.warning(cleaned.summary())
    gathered.profile["rows"]["corpus"] = len(corpus)
    # the profile describes what adaptation trains on: the cleaned corpus
    gathered.profile["corpus"] = profile_data(
        list(frame.loc[kept, "text"]), counter=counter, lengths=frame.loc[kept, "token_count"]
    )
    return cleaned.to_dict()


def _gather_general(recipe: Recipe, gathered: _Gathered) -> None:
    from expectations.derived import corpus_frame
    from expectations.suites import corpus_suite
    from models.data import read_corpus

    general_path = recipe.data.general
    if general_path is None:
        return
    general = _read("general text", "general", lambda: read_corpus(general_path), gathered.checks)
    if general is not None:
        suite = corpus_suite(recipe.validation, name="general", light=True)
        gathered.runs.append((suite, {"rows": corpus_frame(general, None, True)}))
        gathered.profile["rows"]["general"] = len(general)


def _gather_labelled(recipe: Recipe, gathered: _Gathered) -> None:
    """The labelled data's suite rows (train, and eval when the recipe names it) and its profile."""
    from expectations.derived import labelled_frames, ner_frames
    from expectations.drift import profile_data
    from expectations.suites import classification_suite, ner_suite
    from models.data import read_classification, read_ner_labelled

    cfg, data, counter, task = recipe.validation, recipe.data, gathered.counter, recipe.task
    if task == "classification":

        def read_labelled(path: Path, split: str):
            return read_classification(path, data.text_column, data.label_column, data.slice_column)
    else:

        def read_labelled(path: Path, split: str):
            frame, reading = read_ner_labelled(path, data)
            if reading.changed:
                gathered.tag_readings[split] = reading.to_dict()
                logger.warning("%s NER tags: %s", split, reading.summary(list(data.labels)))
            return frame

    train = _read("labelled data (train)", task, lambda: read_labelled(data.train, "train"), gathered.checks)
    evaluation = None
    if data.eval is not None:
        eval_path = data.eval
        evaluation = _read(
            "labelled data (eval)", task, lambda: read_labelled(eval_path, "eval"), gathered.checks
        )
    if train is None or (data.eval is not None and evaluation is None):
        return
    logger.info(
        "%s: %d train rows, %d eval rows", task, len(train), 0 if evaluation is None else len(evaluation)
    )
    profile = gathered.profile
    profile["rows"]["train"] = len(train)
    profile["rows"]["eval"] = 0 if evaluation is None else len(evaluation)
    with_eval = evaluation is not None
    if task == "classification":
        rows, classes = labelled_frames(train, evaluation, list(data.labels), counter)
        gathered.runs.append(
            (classification_suite(cfg, list(data.labels), with_eval), {"rows": rows, "classes": classes})
        )
        profile["task"] = profile_data(
            rows["text"], rows["label"], counter=counter, lengths=rows["token_count"]
        )
    else:
        sentences, tags = ner_frames(train, evaluation, counter)
        gathered.runs.append(
            (ner_suite(cfg, list(data.labels), with_eval), {"sentences": sentences, "tags": tags})
        )
        entity_mentions = tags.loc[tags["tag"].str.startswith("B-"), "tag"].str[2:]
        profile["task"] = profile_data(sentences["text"], counter=counter, lengths=sentences["token_count"])
        profile["task"]["labels"] = _shares(entity_mentions)


def _cleaning(corpus: dict | None, tag_readings: dict, entity_types: list[str]) -> dict | None:
    """What the data needed before training: corpus lines dropped, NER tags read into IOB2."""
    cleaning: dict = {}
    if corpus:
        cleaning["corpus"] = corpus
    if tag_readings:
        cleaning["ner_tags"] = {"entity_types": entity_types, **tag_readings}
    return cleaning or None


def _severity_keys_check(cfg) -> CheckResult | None:
    unknown = unknown_severity_keys(cfg)
    if not unknown:
        return None
    return CheckResult(
        "config",
        "severity_keys_known",
        "recipe",
        "fail",
        False,
        len(unknown),
        len(cfg.severity),
        [{"row": None, "value": key} for key in unknown],
        "validation.severity names checks that do not exist (typo?); see expectations/suites.py CHECK_NAMES",
    )


def _drift_check(profile: dict, reference_profile: dict, cfg) -> tuple[dict, CheckResult]:
    from expectations.drift import compare_profiles

    drift = compare_profiles(profile, reference_profile, cfg.drift_warn, cfg.drift_fail)
    overridden = severity_for(cfg, "drift", "profile_drift")
    severity = "warn" if overridden == "warn" or drift["status"] != "fail" else "fail"
    components = [
        {"row": None, "value": f"{k} = {v:.3f}"}
        for k, v in sorted(drift["components"].items(), key=lambda kv: -kv[1])
    ][:MAX_EXAMPLES]
    check = CheckResult(
        "drift",
        "profile_drift",
        "compare_profiles",
        severity,
        drift["status"] == "ok",
        0 if drift["status"] == "ok" else 1,
        1,
        components,
        "data far from the reference profile makes the production comparison unfair",
    )
    return drift, check


@staged("validate")
def validate_recipe_data(
    recipe: Recipe, out_dir: Path, reference_profile: dict | None = None
) -> ValidationReport:
    """Validate the recipe's corpus, labelled data and general text; write validation.json and Data Docs.

    Never raises for bad data: unreadable files, broken rows and drift all come back as failed checks in the
    report (``report.success`` is False). Raise ``DataValidationError(report)`` yourself to stop a flow.
    """
    from expectations.derived import TokenCounter

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = recipe.validation
    counter = TokenCounter.for_model(_base_model_dir(recipe))
    gathered = _Gathered(
        counter, profile={"version": 1, "length_unit": counter.unit, "tokenizer": counter.source, "rows": {}}
    )
    cleaning = _gather_corpus(recipe, gathered)
    _gather_general(recipe, gathered)
    _gather_labelled(recipe, gathered)
    checks, profile = gathered.checks, gathered.profile

    results, docs_index = run_suites(gathered.runs, cfg, out_dir / "data_docs")
    checks.extend(results)
    severity_check = _severity_keys_check(cfg)
    if severity_check is not None:
        checks.append(severity_check)
    drift = None
    if reference_profile is not None:
        drift, drift_check = _drift_check(profile, reference_profile, cfg)
        checks.append(drift_check)

    order = ["corpus", "general", recipe.task, "config", "drift"]
    checks.sort(
        key=lambda c: order.index(c.suite) if c.suite in order else len(order)
    )  # stable: file order kept
    success = not any(c.status == "fail" for c in checks)
    report = ValidationReport(
        success=success,
        checks=checks,
        profile=profile,
        drift=drift,
        data_docs=docs_index,
        cleaning=_cleaning(cleaning, gathered.tag_readings, list(recipe.data.labels)),
    )
    report.write_json(out_dir / "validation.json")
    logger.info("%s (%.1fs)", report.summary(), time.perf_counter() - started)
    return report


def render_report_dict(data: dict, console: Any = None) -> None:
    """Print a report that travelled as ``ValidationReport.to_dict()`` (e.g. out of a Prefect task)."""
    ValidationReport.from_dict(data).render(console)


def _shares(values: pd.Series) -> dict[str, float]:
    counts = values.value_counts(normalize=True)
    return {str(k): round(float(v), 6) for k, v in sorted(counts.items())}
