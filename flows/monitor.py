"""The `monitor` flow: read the prediction log, measure drift against the served version's training profile,
publish a drift report (markdown artifact with a plot), and start the retrain deployment when drift crosses
the recipe's ``monitor.retrain_on`` level.

    dapt monitor finsent                                  # once (against PREFECT_API_URL, or a temporary server)
    dapt monitor finsent --cron "*/30 * * * *"            # as a scheduled deployment monitor/finsent-monitor

The computation is models/monitoring.py's, the same the service's live gauges use; this flow orchestrates:
registry look-up, log reading, the report files under DAPT_HOME/runs/<time>-<name>-monitor/, the artifact and
``run_deployment``. The retrain deployment (default ``retrain/<name>-scheduled``, what ``dapt schedule``
creates) must exist on the Prefect server; the monitor only starts a run of it (``timeout=0``) and returns.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.retrain import _inline_pictures, artifact_key, write_run_report
from models.settings import prediction_log_dir, runs_dir


class MonitorError(RuntimeError):
    """The monitor cannot do its job; the message says what to start or change."""


def default_retrain_deployment(name: str) -> str:
    return f"retrain/{name}-scheduled"


@task(name="read-prediction-log")
def read_log(name: str, version: int, last: int) -> list[dict[str, Any]]:
    from models.monitoring import read_prediction_log

    return read_prediction_log(prediction_log_dir(), name, version, last=last)


def _markdown(name: str, version: int, report: dict[str, Any], retrain: dict[str, Any] | None) -> str:
    lines = [
        f"# Drift of {name} v{version}: {report['status']}",
        "",
        f"{report['texts']} logged texts (the most recent, at most the recipe's `monitor.window`) against the "
        "version's training profile.",
        "",
        "| statistic | distance | warn | fail | status |",
        "|---|---:|---:|---:|---|",
    ]
    for statistic, judged in report["statistics"].items():
        value = "-" if judged["value"] is None else f"{judged['value']:.4f}"
        lines.append(f"| {statistic} | {value} | {judged['warn']} | {judged['fail']} | {judged['status']} |")
    lines += ["", "## Retraining", ""]
    if retrain is None:
        lines.append(f"not started (drift {report['status']}, retrain on {report['retrain_on']})")
    else:
        lines.append(
            f"started `{retrain['deployment']}`: flow run `{retrain['flow_run_name']}` ({retrain['flow_run_id']})"
        )
    return "\n".join(lines)


if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


def start_retrain(deployment: str, name: str, reason: str) -> dict[str, Any]:
    """A run of the retrain deployment, not waited for."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        # called from sync code, Prefect's sync twin returns the FlowRun itself (not a coroutine)
        run = cast("FlowRun", run_deployment(deployment, timeout=0, tags=["dapt", name, "drift"]))
    except ObjectNotFound:
        raise MonitorError(
            f"drift asks for retraining but the deployment {deployment!r} is not on the Prefect server: start "
            "it with `dapt schedule RECIPE --cron ...` (it creates retrain/<name>-scheduled) or name yours "
            "with --retrain-deployment"
        ) from None
    return {"deployment": deployment, "flow_run_id": str(run.id), "flow_run_name": run.name, "reason": reason}


@flow(name="monitor", log_prints=True)
def monitor(
    name: str,
    alias: str = "production",
    version: int | None = None,
    retrain_deployment: str | None = None,
) -> dict[str, Any]:
    """Drift of the version ``alias`` points at (or ``version``) from its logged predictions; retrain if due."""
    from models.monitoring import drift_from_records, monitor_settings, plot_drift, reaches, reference_profile
    from models.registry.store import Registry

    logger = get_run_logger()
    registry = Registry()
    chosen = (
        registry.get_version(name, version=version) if version else registry.get_version(name, alias=alias)
    )
    config = monitor_settings(chosen.evidence)
    reference = reference_profile(chosen.evidence)
    if reference is None:
        raise MonitorError(
            f"{name} v{chosen.version} was registered without a data profile: there is nothing to compare the "
            "live inputs with (register it with `dapt run`, which records one)"
        )
    records = read_log(name, chosen.version, config.window)
    report = drift_from_records(records, reference, config)
    report["retrain_on"] = config.retrain_on
    logger.info(
        "%s v%s: drift %s over %d logged texts (%s)",
        name,
        chosen.version,
        report["status"],
        report["texts"],
        ", ".join(f"{k} {v['value']}" for k, v in report["statistics"].items()),
    )

    retrain = None
    if reaches(report["status"], config.retrain_on):
        deployment = retrain_deployment or default_retrain_deployment(name)
        reason = f"drift {report['status']} on {name} v{chosen.version}"
        retrain = start_retrain(deployment, name, reason)
        logger.info("started %s (flow run %s): %s", deployment, retrain["flow_run_name"], reason)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    run_dir = runs_dir() / f"{stamp}-{name}-monitor"
    run_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_drift(
        report, f"{name} v{chosen.version}: input drift ({report['status']})", run_dir / "drift.png"
    )
    markdown = _markdown(name, chosen.version, report, retrain)
    (run_dir / "drift.json").write_text(
        json.dumps({**report, "retrain": retrain}, indent=2), encoding="utf-8"
    )
    _, html = write_run_report(run_dir, markdown, [plot], f"Drift of {name} v{chosen.version}")
    create_markdown_artifact(
        key=artifact_key(name, "drift"),
        markdown=markdown + _inline_pictures([plot]),
        description=f"Input drift of {name} v{chosen.version}",
    )
    return {
        "name": name,
        "version": chosen.version,
        "status": report["status"],
        "texts": report["texts"],
        "statistics": report["statistics"],
        "retrain": retrain,
        "report": str(html),
        "plot": str(Path(plot)),
    }


def serve_monitor(
    name: str,
    cron: str,
    alias: str = "production",
    retrain_deployment: str | None = None,
    deployment_name: str | None = None,
) -> None:
    """Create (or update) the deployment `monitor/<name>-monitor` with the cron schedule and serve it. Blocks."""
    from flows.deploy import check_server, validate_cron

    check_server()
    validate_cron(cron)
    monitor.serve(
        name=deployment_name or f"{name}-monitor",
        cron=cron,
        parameters={"name": name, "alias": alias, "retrain_deployment": retrain_deployment},
        description=f"Drift monitoring of {name} ({alias}); retrains through {retrain_deployment or default_retrain_deployment(name)}",
        tags=["dapt", name, "monitor"],
    )
