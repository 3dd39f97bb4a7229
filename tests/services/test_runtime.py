"""ONNX Runtime tuning (services/runtime.py): cores from real cgroup files, session options, the CUDA path's
fallback to CPU on this CPU-only host, and IOBinding giving what session.run gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from services.predictor import CPU, CUDA, BundleError, OnnxPredictor
from services.runtime import (
    RuntimeConfigError,
    RuntimeTuning,
    available_cores,
    cgroup_cpu_limit,
    run_with_binding,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_quota_caps_threads_below_the_affinity_mask(tmp_path):
    """--cpus 1.5 on an 8-core host: two threads (the quota rounded up), said to come from the quota."""
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    proc = _write(tmp_path / "proc_cgroup", "0::/kubepods/pod1\n")
    cores = available_cores(root, proc, affinity=8)
    assert cores == {"cores": 2, "affinity": 8, "cgroup_quota": 1.5, "limited_by": "cgroup CPU quota"}


def test_cgroup_v2_tightest_ancestor_wins_and_max_means_no_limit(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "parent" / "cpu.max", "100000 100000\n")
    _write(root / "parent" / "child" / "cpu.max", "max 100000\n")
    proc = _write(tmp_path / "proc_cgroup", "0::/parent/child\n")
    assert cgroup_cpu_limit(root, proc) == 1.0
    _write(root / "parent" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cores(root, proc, affinity=4)["cores"] == 4


def test_container_view_reads_the_mount_root_when_the_host_path_is_not_there(tmp_path):
    """In a container /proc/self/cgroup may name the host's path while /sys/fs/cgroup is the container's own
    cgroup: its cpu.max still counts."""
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "200000 100000\n")
    proc = _write(tmp_path / "proc_cgroup", "0::/system.slice/docker-abc.scope\n")
    assert available_cores(root, proc, affinity=16)["cores"] == 2


def test_cgroup_v1_cfs_quota(tmp_path):
    root = tmp_path / "cgroup"
    folder = root / "cpu,cpuacct" / "docker" / "abc"
    _write(folder / "cpu.cfs_quota_us", "50000\n")
    _write(folder / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    proc = _write(tmp_path / "proc_cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(root, proc) == 0.5
    # a half-CPU quota still gets one thread
    assert available_cores(root, proc, affinity=8)["cores"] == 1
    _write(folder / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_no_cgroup_files_means_the_affinity_mask(tmp_path):
    cores = available_cores(tmp_path / "absent", tmp_path / "absent_proc", affinity=3)
    assert cores == {"cores": 3, "affinity": 3, "cgroup_quota": None, "limited_by": "affinity mask"}


def test_settings_from_the_environment_are_checked(monkeypatch):
    cores = {"cores": 2, "affinity": 2, "cgroup_quota": None, "limited_by": "affinity mask"}
    monkeypatch.setenv("DAPT_ORT_GRAPH_OPT", "fastest")
    with pytest.raises(
        RuntimeConfigError, match="DAPT_ORT_GRAPH_OPT must be one of disable, basic, extended, all"
    ):
        RuntimeTuning.from_environment(cores)
    monkeypatch.setenv("DAPT_ORT_GRAPH_OPT", "extended")
    monkeypatch.setenv("DAPT_ORT_THREADS", "0")
    with pytest.raises(RuntimeConfigError, match="at least 1"):
        RuntimeTuning.from_environment(cores)
    monkeypatch.setenv("DAPT_ORT_THREADS", "3")
    tuning = RuntimeTuning.from_environment(cores)
    assert (tuning.threads, tuning.threads_from, tuning.graph_optimization) == (
        3,
        "DAPT_ORT_THREADS",
        "extended",
    )
    monkeypatch.delenv("DAPT_ORT_THREADS")
    assert RuntimeTuning.from_environment(cores).threads == 2


def test_the_session_runs_with_the_recorded_settings(classifier_bundle, monkeypatch):
    monkeypatch.setenv("DAPT_ORT_THREADS", "1")
    monkeypatch.setenv("DAPT_ORT_GRAPH_OPT", "basic")
    monkeypatch.setenv("DAPT_ORT_EXECUTION_MODE", "sequential")
    predictor = OnnxPredictor(classifier_bundle, providers=[CPU])
    options = predictor.session.get_session_options()
    import onnxruntime as ort

    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.enable_cpu_mem_arena is False
    runtime = predictor.info()["runtime"]
    assert runtime["intra_op_threads"] == 1 and runtime["threads_from"] == "DAPT_ORT_THREADS"
    assert runtime["graph_optimization_level"] == "basic" and runtime["provider"] == CPU
    assert runtime["io_binding"] is False


def test_idle_intra_op_threads_do_not_spin_unless_asked(classifier_bundle, monkeypatch):
    """Spinning threads take the few cores from the event loop between batches (benchmarks/README, serve.py)."""
    monkeypatch.delenv("DAPT_ORT_SPINNING", raising=False)
    predictor = OnnxPredictor(classifier_bundle, providers=[CPU])
    options = predictor.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert predictor.info()["runtime"]["intra_op_spinning"] == "off"
    monkeypatch.setenv("DAPT_ORT_SPINNING", "on")
    spinning = OnnxPredictor(classifier_bundle, providers=[CPU]).session.get_session_options()
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    monkeypatch.setenv("DAPT_ORT_SPINNING", "fast")
    with pytest.raises(BundleError, match="DAPT_ORT_SPINNING must be one of off, on"):
        OnnxPredictor(classifier_bundle)


def test_a_bad_runtime_setting_is_a_clear_bundle_error(classifier_bundle, monkeypatch):
    monkeypatch.setenv("DAPT_ORT_PROVIDER", "tpu")
    with pytest.raises(BundleError, match="DAPT_ORT_PROVIDER must be one of auto, cpu, cuda"):
        OnnxPredictor(classifier_bundle)


@pytest.mark.parametrize("how", ["providers argument", "DAPT_ORT_PROVIDER=cuda"])
def test_cuda_asked_for_on_a_cpu_host_falls_back_to_the_cpu_variant(
    classifier_bundle, tmp_path, monkeypatch, how
):
    """No GPU here: a CUDA request must end on CPU with the CPU's variant (not the GPU's), no IOBinding, and
    say why. The bundle's GPU preference is fp32 and its CPU preference int8, so the variant tells them apart."""
    import json

    bundle = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, bundle)
    spec = json.loads((bundle / "serving.json").read_text())
    assert spec["preferred_cpu_variant"] == "int8" and spec["preferred_gpu_variant"] == "fp32"
    if how == "providers argument":
        predictor = OnnxPredictor(bundle, providers=[CUDA, CPU])
    else:
        monkeypatch.setenv("DAPT_ORT_PROVIDER", "cuda")
        predictor = OnnxPredictor(bundle)
    assert predictor.provider == CPU
    assert predictor.variant == "int8"
    assert predictor.io_binding is False
    assert predictor.runtime["cuda"].startswith("fell back to CPU")
    assert predictor.classify(["works after the fallback"])[0]["label"] in spec["labels"]


def test_auto_does_not_try_cuda_without_a_driver_and_cpu_choice_skips_it(classifier_bundle, monkeypatch):
    auto = OnnxPredictor(classifier_bundle)
    assert auto.provider == CPU
    assert auto.runtime["cuda"].startswith("not tried")
    monkeypatch.setenv("DAPT_ORT_PROVIDER", "cpu")
    assert OnnxPredictor(classifier_bundle).runtime["cuda"] == "not tried: DAPT_ORT_PROVIDER=cpu"


def test_io_binding_gives_what_session_run_gives(classifier_bundle):
    """The CUDA path's IOBinding runner, exercised on the CPU device here: same outputs as session.run."""
    predictor = OnnxPredictor(classifier_bundle, providers=[CPU])
    feeds = predictor.feeds(predictor.encode(["a short one", "a somewhat longer text to pad the other"]))
    bound = run_with_binding(predictor.session, feeds, "cpu")
    plain = predictor.session.run(None, feeds)
    assert len(bound) == len(plain)
    np.testing.assert_allclose(bound[0], plain[0], rtol=0, atol=1e-6)
    assert predictor.embedding_session is not None
    np.testing.assert_allclose(
        run_with_binding(predictor.embedding_session, feeds, "cpu")[0],
        predictor.embedding_session.run(None, feeds)[0],
        rtol=0,
        atol=1e-6,
    )
