"""Smoke tests of benchmarks. `benchmarks/threads.py` on a tiny model times each OpenMP wait policy quiet and
beside a busy neighbour. `benchmarks/gain_check.py` runs each adaptation-gain check on a tiny recipe. The serving benchmark, `benchmarks/serve.py --quick`, measures the in-process ceiling,
starts our server and the naive one on loopback, drives /classify and /embed, bursts, and prints one JSON document
with every figure the issue asks for (tiny model, a few requests; the infinity peer is left out: installing it
takes minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def benchmark_report(script: str, *arguments: str, env: dict[str, str]) -> dict:
    """Run ``benchmarks/<script>`` as a user does; it must exit 0 and print exactly one JSON document."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout)  # stdout is exactly one JSON document (logs go to stderr or files)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_quick_serve_benchmark_prints_complete_json_and_writes_histogram(isolated_home, tmp_path):
    out = tmp_path / "bench"
    report = benchmark_report(
        "serve.py",
        "--quick",
        "--concurrency",
        "1,4",
        "--requests",
        "12",
        "--threads",
        "1",
        "--burst",
        "16",
        "--peer",
        "none",
        "--out",
        str(out),
        env=os.environ | {"DAPT_HOME": str(isolated_home)},
    )

    for key in ("machine", "model", "matmul_fp32_flops_per_s", "servers", "ratios_ours_over_baseline"):
        assert key in report, f"{key} missing from the report"
    assert report["matmul_fp32_flops_per_s"] > 0
    assert report["machine"]["load_average_before"] is not None
    assert set(report["servers"]) == {"ours", "baseline", "ours_embed"}
    for name in ("ours", "baseline", "ours_embed"):
        server = report["servers"][name]
        assert server["cold_start_s"] > 0
        assert server["variant"] and server["provider"]
        for concurrency in ("1", "4"):
            level = server["levels"][concurrency]
            assert level["requests"] > 0 and level["errors"] == 0, level
            assert level["throughput_rps"] > 0
            assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
            assert level["model_flops_per_s"] > 0 and level["model_flops_vs_matmul"] > 0
    assert (
        report["servers"]["ours"]["provider"] == "CPUExecutionProvider"
        or "CUDA" in (report["servers"]["ours"]["provider"])
    )
    ratios = report["ratios_ours_over_baseline"]["4"]
    assert set(ratios) == {"throughput", "p50", "p95", "p99"} and ratios["throughput"] > 0
    assert set(report["targets"]) == {
        "http_throughput_vs_inprocess_at_4",
        "p99_vs_naive_at_4",
        "c1_p50_minus_inprocess_batch1_ms",
        "recovery_after_burst_s",
        "cold_start_s",
        "served_macro_f1_drop_points",
        "embed_http_throughput_vs_inprocess_at_4",
    }
    ceiling = report["inprocess_ceiling"]
    for run in ("classify", "embed"):
        assert ceiling[run]["batch1_p50_ms"] > 0 and ceiling[run]["batch4_sequences_per_s"] > 0
    assert report["targets"]["http_throughput_vs_inprocess_at_4"]["value"] > 0
    paired = ceiling["paired_single_request"]  # the c=1 target: in-process and HTTP calls alternating
    assert paired["calls_each"] > 0 and paired["inprocess_batch1_p50_ms"] > 0 and paired["http_c1_p50_ms"] > 0
    assert report["targets"]["c1_p50_minus_inprocess_batch1_ms"]["value"] == paired["extra_ms"]
    recovery = report["recovery_after_burst"]
    assert recovery["burst_requests"] > 0 and recovery["first_single_requests_ms"]
    assert report["quality"]["fp32_macro_f1"] is not None

    png = Path(report["histogram_png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "serve.json").read_text(encoding="utf-8"))
    assert saved["servers"]["ours"]["levels"].keys() == report["servers"]["ours"]["levels"].keys()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_threads_benchmark_measures_each_wait_policy_quiet_and_beside_a_busy_neighbour():
    report = benchmark_report(
        "threads.py",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"},
    )

    assert set(report["conditions"]) == {"none", "busy"}
    for condition in report["conditions"].values():
        settings = condition["settings"]
        # each variant really ran as named: its own process, its own OpenMP setting or thread count
        assert settings["passive"]["omp_wait_policy"] == "PASSIVE"
        assert settings["default"]["omp_wait_policy"] is None
        assert settings["one_thread"]["threads"] == 1
        assert all(value > 0 for values in condition["seconds_per_step"].values() for value in values)
    assert report["relative_to_quiet_default"]["none"]["default"] == 1.0
    # the busy neighbour is gone when the benchmark returns: no busy loop outlives it
    neighbour = report["conditions"]["busy"]["neighbour_pid"]
    assert neighbour and not Path(f"/proc/{neighbour}").exists()
    assert report["conditions"]["none"]["neighbour_pid"] is None


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_gain_check_benchmark_reads_an_encoder_against_itself_as_no_gain_with_every_check(
    isolated_home, tiny_base_model, tmp_path
):
    from tests.tiny_recipe import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path / "r", REPO / "data" / "sample", tiny_base_model)
    report = benchmark_report(
        "gain_check.py",
        str(recipe),
        "--encoder",
        str(tiny_base_model),  # the base itself: same seed, same batches, so the same predictions
        "--checks",
        "short_finetune,probe",
        "--out",
        str(tmp_path / "gain.json"),
        env=os.environ | {"DAPT_HOME": str(isolated_home)},
    )
    assert json.loads((tmp_path / "gain.json").read_text()) == report
    assert report["machine"]["cpus"] >= 1
    assert set(report["checks"]) == {"short_finetune", "probe"}
    for method, check in report["checks"].items():
        assert check["method"] == method and check["n_fit"] + check["n_validation"] == report["train_rows"]
        assert check["gain"] == 0.0 and check["stderr"] == 0.0 and check["base"] == check["adapted"]
        assert check["kept"] == "adapted"  # a gain of 0 meets min_gain 0 exactly
        assert check["wall_seconds"] > 0


def test_gain_check_benchmark_refuses_an_unknown_check_or_a_folder_without_a_model(tiny_base_model, tmp_path):
    from tests.tiny_recipe import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path / "r", REPO / "data" / "sample", tiny_base_model)
    (tmp_path / "empty").mkdir()

    def gain_check(*arguments: str) -> subprocess.CompletedProcess:
        script = str(REPO / "benchmarks" / "gain_check.py")
        return subprocess.run(
            [sys.executable, script, str(recipe), *arguments],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    unknown = gain_check("--encoder", str(tiny_base_model), "--checks", "fast")
    assert unknown.returncode == 2
    assert "--checks 'fast'" in unknown.stderr and "short_finetune, probe, finetune" in unknown.stderr
    empty = gain_check("--encoder", str(tmp_path / "empty"))
    assert empty.returncode == 2 and "is not a model folder" in empty.stderr, empty.stderr[-2000:]
