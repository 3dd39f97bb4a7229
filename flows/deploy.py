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
from models.settings import SCHEDULE_CONCURRENCY_ENV, env_text

CONCURRENCY_ENV = SCHEDULE_CONCURRENCY_ENV
DEFAULT_CONCURRENCY = 1  # two retrains of one model at once race for the same caches and alias


class ScheduleError(RuntimeError):
    """The schedule cannot be set up; the message says what to start or set."""


def schedule_concurrency(value: int | str | None = None) -> int | None:
    """How many runs of the scheduled deployment may run at once: ``value``, else $DAPT_SCHEDULE_CONCURRENCY,
    else 1. ``0`` means no limit (returned as None). Later runs wait for a slot (Prefect's ENQUEUE strategy)."""
    raw = env_text(CONCURRENCY_ENV) if value is None else value
    if raw == "" or raw is None:
        return DEFAULT_CONCURRENCY
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        limit = -1
    if limit < 0 or isinstance(raw, bool):
        raise ScheduleError(
            f"{CONCURRENCY_ENV}={raw!r} is not a valid limit: use a whole number of concurrent scheduled runs "
            "(1 by default, 0 for no limit)"
        )
    return limit or None


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
        raise ScheduleError(
            f"{cron!r} is not a valid cron expression (e.g. '0 3 * * *' for 03:00 every day)"
        ) from None
    return cron


def serve_retraining(
    recipe: Recipe,
    cron: str,
    deployment_name: str | None = None,
    limit: int | None = None,
    concurrency: int | str | None = None,
) -> None:
    """Create (or update) the deployment `retrain/<name>` with the cron schedule and serve its runs. Blocks.

    ``concurrency`` (default $DAPT_SCHEDULE_CONCURRENCY, else 1; 0 = no limit) is the deployment's concurrency
    limit on the Prefect server: a run that comes due while another is still running waits for it.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    allowed = schedule_concurrency(concurrency)
    check_server()
    validate_cron(cron)
    retrain.serve(
        global_limit=(
            ConcurrencyLimitConfig(limit=allowed, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
            if allowed
            else None
        ),
        name=deployment_name or f"{recipe.name}-scheduled",
        cron=cron,
        parameters={"recipe": recipe.model_dump(mode="json")},
        description=f"Scheduled retraining of {recipe.name} ({recipe.task})",
        tags=["dapt", recipe.name],
        limit=limit,
    )
