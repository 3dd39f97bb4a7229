"""Where dapt keeps its state. Everything lives under DAPT_HOME (default ./.dapt); deleting it resets the system.

Nothing here runs at import: call :func:`configure_environment` at the start of a command.
"""

from __future__ import annotations

import os
from pathlib import Path


def dapt_home() -> Path:
    return Path(os.environ.get("DAPT_HOME", ".dapt")).expanduser().resolve()


def registry_url() -> str:
    """SQLAlchemy URL of the registry database (SQLite under DAPT_HOME unless DAPT_REGISTRY_URL says otherwise)."""
    return os.environ.get("DAPT_REGISTRY_URL") or f"sqlite:///{dapt_home() / 'registry.db'}"


def artifact_root() -> Path:
    return Path(os.environ.get("DAPT_ARTIFACT_ROOT") or dapt_home() / "artifacts")


def runs_dir() -> Path:
    return dapt_home() / "runs"


# Variables the stack reads at import or start: offline, no telemetry, all state under DAPT_HOME.
def stack_environment(home: Path | None = None) -> dict[str, str]:
    home = home or dapt_home()
    return {
        "DAPT_HOME": str(home),
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
