"""How ONNX Runtime runs in the serving process: threads from the cores the container really has, session
options, the CUDA provider with IOBinding, and a record of all of it for /metadata and /admin/status.

    cores = available_cores()               # min(affinity mask, cgroup CPU quota rounded up)
    tuning = RuntimeTuning.from_environment()
    options = tuning.session_options(ort)   # intra-op threads, graph level, arena, execution mode
    tuning.record(provider=..., io_binding=...)   # what /metadata shows (no paths)

A container limited with ``--cpus 2`` on a 64-core host still sees 64 cores in its affinity mask; sizing the
intra-op pool from the mask alone makes 64 threads fight over 2 cores' worth of quota (throttling, long
tails). The quota is read from cgroup v2 ``cpu.max`` or cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``,
for the process's own cgroup and every parent up to the mount root (the tightest limit wins).

Environment (all optional): ``DAPT_ORT_THREADS`` (intra-op threads), ``DAPT_ORT_GRAPH_OPT``
(disable|basic|extended|all, default all), ``DAPT_ORT_EXECUTION_MODE`` (sequential|parallel, default
sequential), ``DAPT_ORT_SPINNING`` (off|on, default off: idle intra-op threads sleep instead of spinning),
``DAPT_ORT_PROVIDER`` (auto|cpu|cuda, default auto: CUDA only when a driver is present and a CUDA
session really starts; cuda: try CUDA even without a visible driver, still falling back to CPU).

Only onnxruntime, numpy and the standard library are used (onnxruntime imported by the caller).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import settings

THREADS_ENV = settings.THREADS_ENV
GRAPH_OPT_ENV = settings.ORT_GRAPH_OPT_ENV
SPINNING_ENV = settings.ORT_SPINNING_ENV
EXECUTION_MODE_ENV = settings.ORT_EXECUTION_MODE_ENV
PROVIDER_ENV = settings.ORT_PROVIDER_ENV
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")

GRAPH_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
SPINNING = {"off": "0", "on": "1"}
PROVIDER_CHOICES = ("auto", "cpu", "cuda")
# CUDA arena grows by what is asked, not by powers of two: batches of varying shapes would otherwise reserve
# far more device memory than they use.
CUDA_PROVIDER_OPTIONS = {
    "device_id": 0,
    "arena_extend_strategy": "kSameAsRequested",
    "cudnn_conv_algo_search": "HEURISTIC",
    "do_copy_in_default_stream": True,
}


class RuntimeConfigError(RuntimeError):
    """An ONNX Runtime setting in the environment is not valid; the message names it and the valid values."""


# --------------------------------------------------------------------------- cores


def _cgroup_v2_limit(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("max 100000" or "<quota> <period>")."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_v1_limit(folder: Path) -> float | None:
    """CPUs allowed by a cgroup v1 cpu controller folder (``cpu.cfs_quota_us`` is -1 when unlimited)."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text().strip())
        period = int((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroups(proc_self_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _ancestors(root: Path, cgroup_path: str | None) -> list[Path]:
    """The cgroup's folder and each parent up to the mount root. Inside a container the mount root is the
    container's own cgroup while /proc/self/cgroup may name the host path: folders that do not exist are
    skipped, the root always counts."""
    folders = []
    if cgroup_path:
        parts = [p for p in cgroup_path.split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), 0, -1):
            folders.append(root.joinpath(*parts[:depth]))
    folders.append(root)
    return [folder for folder in folders if folder.is_dir()]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs, may be fractional) on this process's cgroups, or None if unlimited."""
    v2_path, v1_path = _own_cgroups(proc_self_cgroup)
    limits: list[float] = []
    for folder in _ancestors(root, v2_path):
        try:
            limit = _cgroup_v2_limit((folder / "cpu.max").read_text())
        except OSError:
            continue
        if limit is not None:
            limits.append(limit)
    # cgroup v1 mounts each controller on its own folder ("cpu", "cpu,cpuacct" or a link to it)
    for mount in (root / "cpu", root / "cpu,cpuacct"):
        if not mount.is_dir():
            continue
        for folder in _ancestors(mount, v1_path):
            limit = _cgroup_v1_limit(folder)
            if limit is not None:
                limits.append(limit)
        break
    return min(limits) if limits else None


def affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_cores(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP, affinity: int | None = None
) -> dict[str, Any]:
    """``{"cores", "affinity", "cgroup_quota", "limited_by"}``: the whole cores this process may keep busy."""
    affinity = affinity_cores() if affinity is None else affinity
    quota = cgroup_cpu_limit(root, proc_self_cgroup)
    cores, limited_by = affinity, "affinity mask"
    if quota is not None and math.ceil(quota) < affinity:
        # A fractional quota (1.5 CPUs) still runs two threads part of the time: round up, never below one.
        cores, limited_by = max(1, math.ceil(quota)), "cgroup CPU quota"
    return {
        "cores": cores,
        "affinity": affinity,
        "cgroup_quota": None if quota is None else round(quota, 3),
        "limited_by": limited_by,
    }


# --------------------------------------------------------------------------- settings


def _choice(env: str, choices, default: str) -> str:
    return settings.env_choice(env, choices, default, error=RuntimeConfigError)


@dataclass(frozen=True)
class RuntimeTuning:
    """The ONNX Runtime settings one predictor's sessions are built with."""

    threads: int
    threads_from: str
    cores: dict[str, Any]
    graph_optimization: str = "all"
    execution_mode: str = "sequential"
    provider_choice: str = "auto"
    spinning: str = "off"

    @classmethod
    def from_environment(cls, cores: dict[str, Any] | None = None) -> RuntimeTuning:
        cores = available_cores() if cores is None else cores
        threads = settings.env_number(
            THREADS_ENV,
            0,
            kind=int,
            valid=lambda n: n >= 1,
            requirement="a whole number of threads, at least 1",
            error=RuntimeConfigError,
        )
        if threads:
            threads_from = THREADS_ENV
        else:
            threads, threads_from = cores["cores"], cores["limited_by"]
        return cls(
            threads=threads,
            threads_from=threads_from,
            cores=cores,
            graph_optimization=_choice(GRAPH_OPT_ENV, GRAPH_LEVELS, "all"),
            execution_mode=_choice(EXECUTION_MODE_ENV, EXECUTION_MODES, "sequential"),
            provider_choice=_choice(PROVIDER_ENV, PROVIDER_CHOICES, "auto"),
            spinning=_choice(SPINNING_ENV, SPINNING, "off"),
        )

    def session_options(self, ort: Any, log_severity: int = 2) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        # One batch runs at a time (the batcher's single inference thread): inter-op threads only help
        # graphs with parallel branches, which BERT encoders do not have.
        options.inter_op_num_threads = 1
        options.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODES[self.execution_mode])
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, GRAPH_LEVELS[self.graph_optimization]
        )
        # Every request batch has its own (batch, length) shape: the CPU arena and memory patterns keep
        # growing with each new shape, so a long-running server's RSS creeps up. Plain allocations stay flat.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        # Idle intra-op threads spin by default, which on a few cores takes CPU from the event loop answering
        # the request that batch just finished (benchmarks/README, serve.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", SPINNING[self.spinning])
        options.log_severity_level = log_severity
        return options

    def record(self, *, provider: str, io_binding: bool, cuda: str) -> dict[str, Any]:
        """What /metadata and /admin/status show about how the model runs (no file paths)."""
        return {
            "provider": provider,
            "intra_op_threads": self.threads,
            "threads_from": self.threads_from,
            "cores": dict(self.cores),
            "inter_op_threads": 1,
            "execution_mode": self.execution_mode,
            "intra_op_spinning": self.spinning,
            "graph_optimization_level": self.graph_optimization,
            "cpu_mem_arena": False,
            "mem_pattern": False,
            "cuda_arena_extend_strategy": CUDA_PROVIDER_OPTIONS["arena_extend_strategy"]
            if provider == "CUDAExecutionProvider"
            else None,
            "io_binding": io_binding,
            "provider_choice": self.provider_choice,
            "cuda": cuda,
        }


# --------------------------------------------------------------------------- running


def run_with_binding(session: Any, feeds: dict[str, Any], device: str) -> list[Any]:
    """``session.run`` through IOBinding: inputs copied to ``device`` once, outputs allocated there by ONNX
    Runtime and copied back to host memory. On CUDA this avoids ORT's per-run staging copies."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, device)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()
