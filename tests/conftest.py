"""Shared fixtures: an isolated DAPT_HOME per session and tiny BERT models built in code (offline, seconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory) -> Path:
    """Every test session gets its own DAPT_HOME (registry, BentoML store, Prefect home)."""
    from models.settings import stack_environment

    home = tmp_path_factory.mktemp("dapt_home")
    for key, value in stack_environment(home).items():
        os.environ[key] = value
    # fp32 training everywhere, so the tiny models train alike on CPUs with and without native bf16; the bf16
    # path has its own tests (the bf16_linear_outputs fixture below)
    os.environ.setdefault("DAPT_CPU_BF16", "off")
    return home


@pytest.fixture(scope="module")
def prefect_harness():
    """A throw-away Prefect server and database for one test module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A 2-layer, 32-hidden BERT with MiniLM's real uncased WordPiece tokenizer, saved as an HF directory."""
    from models.tiny import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture()
def bf16_linear_outputs(monkeypatch) -> list:
    """CPU training in bf16 (``DAPT_CPU_BF16=on``, as 'auto' picks on a CPU with native bf16), and the dtype of
    every linear layer's output from then on: bf16 among them shows the work ran in autocast."""
    import torch

    monkeypatch.setenv("DAPT_CPU_BF16", "on")
    dtypes: list = []
    real_linear = torch.nn.functional.linear

    def recording_linear(*args, **kwargs):
        output = real_linear(*args, **kwargs)
        dtypes.append(output.dtype)
        return output

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    return dtypes


@pytest.fixture()
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture()
def copy_sample(tmp_path) -> Path:
    """A writable copy of data/sample/ for tests that break data on purpose."""
    target = tmp_path / "sample"
    shutil.copytree(SAMPLE, target)
    return target


# ---------------------------------------------------------------------------------------------------- figures
# Tests that measure something (load, fuzzing, swaps, shutdown) print lines like "[load] requests=10000 ...".
# They are collected from the captured output and repeated at the end of the run, so CI logs show the figures
# without `pytest -s`.
FIGURE_PREFIXES = ("[load]", "[fuzz]", "[swap]", "[metrics]", "[sigterm]", "[ui]", "[progress]")
_figures: list[str] = []


def pytest_runtest_logreport(report) -> None:
    if report.when != "call":
        return
    for line in report.capstdout.splitlines():
        if line.startswith(FIGURE_PREFIXES):
            _figures.append(line)


def pytest_terminal_summary(terminalreporter) -> None:
    if _figures:
        terminalreporter.section("figures measured by the tests")
        for line in _figures:
            terminalreporter.write_line(line)
