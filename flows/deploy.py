"""Scheduled retraining: serve the `retrain` flow as a Prefect deployment with a cron schedule.

Needs a real Prefect server (`prefect server start --host 127.0.0.1`, SQLite by default, Postgres through
PREFECT_SERVER_DATABASE_CONNECTION_URL) and PREFECT_API_URL pointing at it. `flow.serve` runs the
deployment's runs in this process; for Docker or Kubernetes work pools use `retrain.deploy(...)` instead
(see the README).
"""

from __future__ import annotations

import os

from flows.retrain import retrain
from models.recipe import Recipe


class ScheduleError(RuntimeError):
    """The schedule cannot be set up; the message says what to start or set."""


def check_server() -> str:
    url = os.environ.get("PREFECT_API_URL", "")
    if not url:
        raise ScheduleError(
            "PREFECT_API_URL is not set: start a server with `prefect server start --host 127.0.0.1 --port 4200` "
            "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise ScheduleError(f"the Prefect server at {url} does not answer ({exc}); is it running?") from None
    return url


def validate_cron(cron: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ScheduleError(f"{cron!r} is not a valid cron expression (e.g. '0 3 * * *' for 03:00 every day)") from None
    return cron


def serve_retraining(recipe: Recipe, cron: str, deployment_name: str | None = None, limit: int | None = None) -> None:
    """Create (or update) the deployment `retrain/<name>` with the cron schedule and serve its runs. Blocks."""
    check_server()
    validate_cron(cron)
    retrain.serve(
        name=deployment_name or f"{recipe.name}-scheduled",
        cron=cron,
        parameters={"recipe": recipe.model_dump(mode="json")},
        description=f"Scheduled retraining of {recipe.name} ({recipe.task})",
        tags=["dapt", recipe.name],
        limit=limit,
    )
