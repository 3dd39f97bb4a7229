"""The installed `dapt` console script, run the way cron, CI and users run it: exit codes and messages.

Every case runs `<venv>/bin/dapt` in a subprocess (not Typer's CliRunner, which hides what `main()` does with
the app's result). Exit codes: 0 ok, 1 failure, 2 usage/user error, 3 gate refused (dapt/exit_codes.py).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dapt.exit_codes import ExitCode
from tests.tiny_recipe import write_tiny_recipe

REPO = Path(__file__).resolve().parents[1]
DAPT = Path(sys.executable).parent / "dapt"  # the console script pip installed next to this interpreter


def dapt(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    from models.settings import stack_environment

    env = os.environ | stack_environment(home) | {"COLUMNS": "200", "DAPT_TORCH_THREADS": "1"}
    # This checkout's code, whichever checkout the console script was installed from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    for key in ("DAPT_REGISTRY_URL", "DAPT_ARTIFACT_ROOT", "PREFECT_API_URL"):
        env.pop(key, None)  # the registry and Prefect of this DAPT_HOME only
    return subprocess.run(
        [str(DAPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_console_script_is_installed():
    assert DAPT.is_file(), f"{DAPT} is missing: install the package (pip install -e .) into {sys.prefix}"


# ------------------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize(
    ("args", "says", "hint"),
    [
        ([], "Usage: dapt", ""),  # no command: the help, as a usage error
        (["run"], "Missing argument", "Try 'dapt run --help' for help."),
        (["serve", "--port", "abc"], "Invalid value for '--port'", "Try 'dapt serve --help' for help."),
        (
            ["models", "promote", "finsent", "abc"],
            "Invalid value for 'version'",
            "Try 'dapt models promote --help' for help.",
        ),
        (["no-such-command"], "No such command", "Try 'dapt --help' for help."),
    ],
)
def test_usage_errors_print_the_usage_and_exit_2_without_a_traceback(tmp_path, args, says, hint):
    result = dapt(*args, home=tmp_path / "home")
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.USAGE == 2, output
    assert "Traceback" not in output
    assert says in output and hint in output


def test_help_exits_0(tmp_path):
    result = dapt("--help", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "validate" in result.stdout and "models" in result.stdout


def test_registry_commands_on_an_unknown_model_exit_1(tmp_path):
    home = tmp_path / "home"
    for args in (["models", "diff", "finsent", "1", "999"], ["models", "promote", "finsent", "999"]):
        result = dapt(*args, home=home)
        assert result.returncode == ExitCode.FAILURE == 1, (args, result.stdout, result.stderr)
        assert "no model named 'finsent'" in result.stderr
        assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------- validation
def test_validate_exits_1_when_a_data_check_fails_and_0_when_all_pass(tmp_path, sample_dir, tiny_base_model):
    home = tmp_path / "home"
    clean = write_tiny_recipe(tmp_path / "clean", sample_dir, tiny_base_model)
    passed = dapt("validate", str(clean), home=home)
    assert passed.returncode == 0, passed.stdout + passed.stderr

    broken = write_tiny_recipe(tmp_path / "broken", sample_dir, tiny_base_model)
    train = broken.parent / "train.csv"
    with train.open("a", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerow(["Shares jumped 12 %.", "bullish", "newswire"])  # not a recipe label
    failed = dapt("validate", str(broken), home=home)
    assert failed.returncode == ExitCode.FAILURE == 1, failed.stdout + failed.stderr
    assert "bullish" in failed.stdout  # the table names the offending value
    # and under it, what the failing check guards against and how to fix it
    assert "classification.labels_in_declared_set: " in " ".join(failed.stdout.split())
    assert "Traceback" not in failed.stderr


def test_a_bad_training_setting_stops_dapt_run_before_any_stage_with_exit_2(
    tmp_path, sample_dir, tiny_base_model, monkeypatch
):
    home = tmp_path / "home"
    recipe = write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model)
    monkeypatch.setenv("DAPT_CPU_BF16", "fast")
    result = dapt("run", str(recipe), home=home)
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.USAGE == 2, output
    assert "DAPT_CPU_BF16 must be one of auto, on, off; got 'fast'" in output
    assert "Traceback" not in output and "validate-data" not in output  # no stage ran


# ------------------------------------------------------------------ a refused gate, and what follows it
# One flow run on tiny data whose gate floor (0.99) a 6-step model cannot reach: the version is registered,
# `production` does not move. The model name has a '_' (the recipe allows it; Prefect artifact keys do not).
MODEL = "tiny_gate"


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory, tiny_base_model):
    root = tmp_path_factory.mktemp("refused")
    home = root / "home"
    recipe = write_tiny_recipe(
        root / "recipe", REPO / "data" / "sample", tiny_base_model, name=MODEL, gate={"min_value": 0.99}
    )
    result = dapt("run", str(recipe), home=home, timeout=600)
    return {"home": home, "recipe": recipe, "result": result}


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_run_the_gate_refuses_exits_3_and_says_how_to_inspect_or_force_it(refused_run):
    result = refused_run["result"]
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.GATE_REFUSED == 3, output[-4000:]
    assert "Traceback" not in output
    assert f"the gate refused {MODEL} v1" in result.stderr
    assert "0.99" in result.stderr  # the failed check, with the floor it missed
    assert f"dapt models show {MODEL} --version 1" in result.stderr
    assert f'dapt models promote {MODEL} 1 --force "reason"' in result.stderr
    # Registered, not promoted; and the flow got past its Prefect artifacts despite the '_' in the name.
    listed = dapt("models", "list", MODEL, home=refused_run["home"])
    assert listed.returncode == 0 and MODEL in listed.stdout
    summary = json.loads(next((refused_run["home"] / "runs").glob(f"*-{MODEL}/summary.json")).read_text())
    assert summary["version"] == 1 and summary["gate"]["passed"] is False


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_unknown_versions_exit_1_and_a_refused_promotion_exits_3(refused_run):
    home = refused_run["home"]
    assert refused_run["result"].returncode == 3, refused_run["result"].stderr[-3000:]
    for args in (["models", "diff", MODEL, "1", "999"], ["models", "promote", MODEL, "999"]):
        result = dapt(*args, home=home)
        assert result.returncode == ExitCode.FAILURE, (args, result.stdout, result.stderr)
        assert "999" in result.stderr and "Traceback" not in result.stderr

    refused = dapt("models", "promote", MODEL, "1", "--min-value", "0.99", home=home)
    assert refused.returncode == ExitCode.GATE_REFUSED, refused.stdout + refused.stderr
    assert "--force" in refused.stderr
    forced = dapt(
        "models", "promote", MODEL, "1", "--min-value", "0.99", "--force", "test override", home=home
    )
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "now points at v1" in forced.stdout


def test_artifact_keys_are_valid_for_model_names_with_underscores():
    from prefect.types.names import raise_on_name_alphanumeric_dashes_only

    from flows.retrain import artifact_key

    for name in ("tiny_gate", "fin_sent_2", "finsent"):
        for kind in ("report", "metrics"):
            key = artifact_key(name, kind)
            assert raise_on_name_alphanumeric_dashes_only(key, "artifact key") == key
    assert artifact_key("finsent", "report") == "finsent-report"  # names without '_' keep their key


# -------------------------------------------------------------------------------------- export --out
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_export_refuses_a_registered_version_or_a_foreign_folder_and_replaces_an_earlier_export(
    refused_run, tmp_path
):
    from models.registry.store import Registry

    home, recipe = refused_run["home"], str(refused_run["recipe"])
    assert refused_run["result"].returncode == 3, refused_run["result"].stderr[-3000:]
    run_dir = next((home / "runs").glob(f"*-{MODEL}"))
    model = str(run_dir / "finetune")
    registry = Registry(f"sqlite:///{home / 'registry.db'}", home / "artifacts")
    version_dir = registry.get_version(MODEL, version=1).path
    before = sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*"))

    # A registered version folder: refused before anything is written; it still verifies.
    into_registry = dapt("export", recipe, "--model", model, "--out", str(version_dir), home=home)
    assert into_registry.returncode == ExitCode.USAGE, into_registry.stdout + into_registry.stderr
    assert str(version_dir) in into_registry.stderr.replace("\n", "")
    assert "never overwritten" in into_registry.stderr
    assert sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*")) == before
    registry.load_path(MODEL, version=1, verify=True)

    # A folder with the user's own files (an onnx/ among them): refused, nothing deleted.
    foreign = tmp_path / "mine"
    (foreign / "onnx").mkdir(parents=True)
    (foreign / "onnx" / "keep.onnx").write_bytes(b"mine")
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    refused = dapt("export", recipe, "--model", model, "--out", str(foreign), home=home)
    assert refused.returncode == ExitCode.USAGE, refused.stdout + refused.stderr
    assert "is not empty" in refused.stderr and "Traceback" not in refused.stderr
    assert (foreign / "onnx" / "keep.onnx").read_bytes() == b"mine"
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"

    # The flow's own export of this run is an earlier export: exporting again replaces it.
    bundle = run_dir / "bundle"
    assert (bundle / "serving.json").is_file()
    again = dapt("export", recipe, "--model", model, "--out", str(bundle), home=home, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (bundle / "onnx" / "fp32" / "model.onnx").is_file()


def test_a_copied_version_folder_outside_the_store_is_refused_too(tmp_path):
    from models.export.onnx import ExportError, check_export_target

    copied = tmp_path / "copy-of-v3"
    copied.mkdir()
    for name in ("serving.json", "evidence.json"):
        (copied / name).write_text("{}", encoding="utf-8")
    (copied / "reports").mkdir()
    (copied / "reports" / "parity.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ExportError, match="registered model version"):
        check_export_target(copied)
    (copied / "evidence.json").unlink()
    check_export_target(copied)  # the same folder without the registry's file is an earlier export
    check_export_target(tmp_path / "new")  # a folder that does not exist yet
