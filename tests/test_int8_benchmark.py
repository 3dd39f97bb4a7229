"""benchmarks/int8.py: its quick mode prints one JSON report with every figure per option, and without the
real data it says where to point it (no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, home: Path, timeout: int) -> subprocess.CompletedProcess:
    env = os.environ | {"DAPT_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("DAPT_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "int8.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_without_the_real_data_it_names_the_flag_and_the_variable(tmp_path):
    completed = _run("--data-dir", str(tmp_path / "nowhere"), home=tmp_path, timeout=120)
    assert completed.returncode == 2 and completed.stdout == ""
    assert "real data not found" in completed.stderr and "--data-dir" in completed.stderr
    assert "DAPT_DATA_DIR" in completed.stderr and "Traceback" not in completed.stderr


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_quick_mode_reports_agreement_drop_and_latency_per_option(tmp_path):
    completed = _run(
        "--quick", "--options", "before,default", "--out", str(tmp_path / "out"), home=tmp_path, timeout=580
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)  # stdout is exactly one JSON document
    assert report["machine"]["load_average"] is not None
    task = report["tasks"]["classification"]
    assert task["fp32"]["label_agreement"] == 1.0 and set(task["fp32"]["ms_per_text"]) == {"1", "32"}
    assert set(task["options"]) == {"before", "default"}
    for option in task["options"].values():
        assert 0.0 <= option["label_agreement"] <= 1.0
        assert set(option["label_agreement_by_batch_size"]) == {"1", "32"}
        assert option["label_agreement"] == min(option["label_agreement_by_batch_size"].values())
        assert isinstance(option["macro_f1_drop_points_vs_fp32"], float)
        assert all(v > 0 for v in option["speedup_vs_fp32"].values())
    assert task["options"]["default"]["settings"]["nodes_kept_fp32"]["head"] == 2
    assert task["options"]["before"]["settings"]["operators"] == ["MatMul", "Attention", "Gather"]
    assert json.loads((tmp_path / "out" / "int8.json").read_text()) == report


def test_ner_is_scored_on_the_entity_types_the_checkpoint_knows(tmp_path):
    from benchmarks.int8 import NER_TAGS, checkpoint_tags, only_tags

    disease_only = {"id2label": {"0": "O", "1": "B-Disease", "2": "I-Disease"}}
    (tmp_path / "config.json").write_text(json.dumps(disease_only))
    tags = checkpoint_tags(tmp_path, NER_TAGS)
    assert tags == ["O", "B-Disease", "I-Disease"]
    assert only_tags(["B-Chemical", "O", "B-Disease", "I-Disease", "I-Chemical"], tags) == [
        "O",
        "O",
        "B-Disease",
        "I-Disease",
        "O",
    ]
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    assert checkpoint_tags(tmp_path, NER_TAGS) == NER_TAGS  # generic names: the benchmark's own tag set
