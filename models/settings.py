"""Where dapt keeps its state, and every ``DAPT_*`` environment variable, read in this one place.

Everything lives under DAPT_HOME (default ./.dapt); deleting it resets the system. This module is the bottom
layer: the library, the flows, the services and the CLI import it; it imports nothing of the project.
Nothing here runs at import: call :func:`configure_environment` at the start of a command.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypeVar

# State (read by the library, the flows and the CLI).
HOME_ENV = "DAPT_HOME"
REGISTRY_URL_ENV = "DAPT_REGISTRY_URL"
ARTIFACT_ROOT_ENV = "DAPT_ARTIFACT_ROOT"
ARTIFACT_CACHE_ENV = "DAPT_ARTIFACT_CACHE"
ACTOR_ENV = "DAPT_ACTOR"
SCHEDULE_CONCURRENCY_ENV = "DAPT_SCHEDULE_CONCURRENCY"
# Serving (read by services/ when the service starts).
BUNDLE_ENV = "DAPT_BUNDLE_DIR"
BENTO_MODEL_ENV = "DAPT_BENTO_MODEL"
MODEL_NAME_ENV = "DAPT_MODEL_NAME"
MODEL_VERSION_ENV = "DAPT_MODEL_VERSION"
ALIAS_ENV = "DAPT_MODEL_ALIAS"
# Further models served beside DAPT_BUNDLE_DIR's, and the shadow version (JSON, written by `dapt serve`).
EXTRA_MODELS_ENV = "DAPT_EXTRA_MODELS"
SHADOW_ENV = "DAPT_SHADOW"
SHADOW_QUEUE_ENV = "DAPT_SHADOW_QUEUE"
SHADOW_EVIDENCE_S_ENV = "DAPT_SHADOW_EVIDENCE_S"
ADMIN_TOKEN_ENV = "DAPT_ADMIN_TOKEN"
MAX_TEXTS_ENV = "DAPT_MAX_TEXTS"
MAX_CHARS_ENV = "DAPT_MAX_CHARS"
MAX_BODY_ENV = "DAPT_MAX_BODY_BYTES"
RELOAD_POLL_ENV = "DAPT_RELOAD_POLL_S"
MAX_BATCH_SIZE_ENV = "DAPT_MAX_BATCH_SIZE"
MAX_BATCH_TOKENS_ENV = "DAPT_MAX_BATCH_TOKENS"
BATCH_WAIT_MS_ENV = "DAPT_BATCH_WAIT_MS"
MAX_QUEUE_TEXTS_ENV = "DAPT_MAX_QUEUE_TEXTS"
THREADS_ENV = "DAPT_ORT_THREADS"
ORT_GRAPH_OPT_ENV = "DAPT_ORT_GRAPH_OPT"
ORT_EXECUTION_MODE_ENV = "DAPT_ORT_EXECUTION_MODE"
ORT_SPINNING_ENV = "DAPT_ORT_SPINNING"
ORT_PROVIDER_ENV = "DAPT_ORT_PROVIDER"
HEADER_TIMEOUT_ENV = "DAPT_HEADER_TIMEOUT_S"
KEEP_ALIVE_ENV = "DAPT_KEEP_ALIVE_S"
MAX_CONNECTIONS_ENV = "DAPT_MAX_CONNECTIONS"
# Monitoring (read by services/ at start and by the monitor flow).
PREDICTION_LOG_ENV = "DAPT_PREDICTION_LOG"  # off (default) | hash | text
PREDICTION_LOG_DIR_ENV = "DAPT_PREDICTION_LOG_DIR"
PREDICTION_LOG_SAMPLE_ENV = "DAPT_PREDICTION_LOG_SAMPLE"
PREDICTION_LOG_MAX_MB_ENV = "DAPT_PREDICTION_LOG_MAX_MB"
PREDICTION_LOG_FILES_ENV = "DAPT_PREDICTION_LOG_FILES"
DRIFT_ENV = "DAPT_DRIFT"  # on (default) | off
TRACING_ENV = "DAPT_TRACING"  # off (default) | on: OpenTelemetry spans for the prediction endpoints
CPU_BF16_ENV = "DAPT_CPU_BF16"  # auto (default) | on | off: fine-tuning on the CPU in bf16 autocast

N = TypeVar("N", int, float)


def env_text(name: str, default: str = "") -> str:
    """The variable's value, or ``default`` when it is unset or empty."""
    return os.environ.get(name) or default


def env_number(
    name: str,
    default: N,
    *,
    kind: Callable[[str], N],
    valid: Callable[[N], bool],
    requirement: str,
    error: type[Exception] = RuntimeError,
) -> N:
    """A numeric variable: ``default`` when unset or empty; ``error`` naming the variable and ``requirement``
    (e.g. "a positive whole number") when it does not parse or ``valid`` refuses it."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise error(f"{name} must be {requirement}, got {value!r}") from None
    if not valid(number):
        raise error(f"{name} must be {requirement}, got {value!r}")
    return number


def env_choice(
    name: str, choices: Collection[str], default: str, *, error: type[Exception] = RuntimeError
) -> str:
    """A variable that takes one of ``choices`` (case-insensitive): ``default`` when unset or empty; ``error``
    naming the variable and the choices otherwise."""
    value = env_text(name, default).strip().lower()
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(choices)}; got {os.environ.get(name)!r}")
    return value


def dapt_home() -> Path:
    return Path(os.environ.get(HOME_ENV, ".dapt")).expanduser().resolve()


def registry_url() -> str:
    """SQLAlchemy URL of the registry database (SQLite under DAPT_HOME unless DAPT_REGISTRY_URL says otherwise)."""
    return os.environ.get(REGISTRY_URL_ENV) or f"sqlite:///{dapt_home() / 'registry.db'}"


def artifact_location() -> str:
    """Where registered bundles are stored: a folder, or an object-store URL such as ``s3://bucket/prefix``
    (endpoint and credentials from the standard AWS variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)."""
    return os.environ.get(ARTIFACT_ROOT_ENV) or str(dapt_home() / "artifacts")


def artifact_root() -> Path:
    """The artifact store as a local folder (for checks against local paths; an object-store URL never
    matches a local folder)."""
    return Path(artifact_location())


def artifact_cache_dir() -> Path:
    """Where readers of an object-store registry keep their checked copies (DAPT_ARTIFACT_CACHE)."""
    return Path(os.environ.get(ARTIFACT_CACHE_ENV) or dapt_home() / "artifact-cache")


def runs_dir() -> Path:
    return dapt_home() / "runs"


def prediction_log_dir() -> Path:
    """Where the prediction log lives (one folder per model): DAPT_PREDICTION_LOG_DIR, else DAPT_HOME/predictions."""
    return Path(os.environ.get(PREDICTION_LOG_DIR_ENV) or dapt_home() / "predictions").expanduser()


def actor() -> str | None:
    """Who the registry records as acting (DAPT_ACTOR), or None to use the login and host name."""
    return os.environ.get(ACTOR_ENV) or None


def process_rank() -> int:
    """This process's rank in a distributed launch (torchrun / accelerate set RANK); 0 when launched alone."""
    return int(os.environ.get("RANK") or "0")


def world_size() -> int:
    """How many processes a distributed launch started (WORLD_SIZE); 1 when launched alone."""
    return int(os.environ.get("WORLD_SIZE") or "1")


def is_main_process() -> bool:
    """False in the non-zero ranks of a distributed launch (torchrun / accelerate set RANK): only rank 0 writes."""
    return process_rank() == 0


def admin_token() -> str:
    """The bearer token that enables admin actions (reload, promote, rollback); empty means disabled."""
    return os.environ.get(ADMIN_TOKEN_ENV, "")


# Variables the stack reads at import or start: offline, no telemetry, all state under DAPT_HOME.
def stack_environment(home: Path | None = None) -> dict[str, str]:
    home = home or dapt_home()
    return {
        HOME_ENV: str(home),
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "ORT_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DO_NOT_TRACK": "1",
        "MPLBACKEND": "Agg",
        "GX_ANALYTICS_ENABLED": "False",
    }


def configure_environment() -> Path:
    """Set the stack's variables (without overriding ones the user set) and create DAPT_HOME."""
    home = dapt_home()
    for key, value in stack_environment(home).items():
        os.environ.setdefault(key, value)
    home.mkdir(parents=True, exist_ok=True)
    return home
