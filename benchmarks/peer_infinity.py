"""The real peer of the serving benchmark: `infinity-emb` (PyPI) serving the bundle's embedding model.

    venv = ensure_venv(bench_dir() / "peer-infinity-0.0.78")    # its own virtual environment, never the project's
    folder = model_folder(bundle, bench_dir() / "peer-model")    # the layout its optimum engine expects
    process = start(venv, folder, port, threads, log)            # POST /embeddings {"model": "peer", "input": [...]}

Which engine and why: infinity's **optimum (ONNX Runtime) engine**, on the very ``model.onnx`` our ``/embed``
serves (``onnx/embedding/model.onnx`` of the bundle, copied). Pointed at a folder by path, infinity 0.0.78 lists the
folder's files with their folder prefix and passes that whole path as Optimum's ``file_name``, which Optimum
compares with bare file names ("Could not find any ONNX files with target file name …/model.onnx"). Started
with the model folder as its working directory and ``--model-id .``, the listed name is the bare
``model.onnx`` and the engine loads it. Its own graph re-optimisation is switched off
(``INFINITY_ONNX_DISABLE_OPTIMIZE``): the file is already optimised at O2 and both servers must run the same
graph. Pooling is mean + L2 normalisation, as ours for MiniLM. Offline: ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

INFINITY_VERSION = "0.0.78"
# The CPU build of torch (optimum needs it installed; nothing runs on it): the plain pin resolves to the local
# +cpu wheel here instead of a CUDA build with gigabytes of NVIDIA libraries. transformers pinned to the release
# that optimum 2.1 / optimum-onnx 0.1 work with, so pip does not backtrack through every 5.x release.
PINS = ("torch==2.13.0", "transformers==4.57.6")
SERVED_NAME = "peer"


class PeerError(RuntimeError):
    """The peer could not be installed or started; the message says where to look."""


def ensure_venv(venv: Path, log: Path, timeout_s: float = 1200.0) -> Path:
    """A virtual environment with infinity-emb[server,optimum] (created on first use, reused after)."""
    executable = venv / "bin" / "infinity_emb"
    if executable.is_file():
        return executable
    log.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    with open(log, "ab") as handle:
        try:
            subprocess.run([base_python, "-m", "venv", str(venv)], check=True, stdout=handle, stderr=handle)
            subprocess.run(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    f"infinity-emb[server,optimum]=={INFINITY_VERSION}",
                    *PINS,
                ],
                check=True,
                stdout=handle,
                stderr=handle,
                timeout=timeout_s,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(venv, ignore_errors=True)  # a half-made venv would be taken as ready next time
            raise PeerError(f"installing infinity-emb {INFINITY_VERSION} failed ({exc}); see {log}") from None
    if not executable.is_file():
        raise PeerError(f"infinity-emb installed but {executable} is missing; see {log}")
    return executable


def model_folder(bundle: Path, root: Path) -> Path:
    """model.onnx + config.json of the bundle's embedding model and its tokenizer files, in one folder."""
    source = bundle / "onnx" / "embedding"
    if not (source / "model.onnx").is_file():
        raise PeerError(f"{bundle} has no embedding model (onnx/embedding/model.onnx): re-export the bundle")
    key = hashlib.sha256((source / "model.onnx").read_bytes()).hexdigest()[:12]
    folder = root / key
    if (folder / "model.onnx").is_file():
        return folder
    staging = root / f".{key}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in (source / "model.onnx", source / "config.json", *sorted((bundle / "tokenizer").iterdir())):
        if path.is_file():
            shutil.copy2(path, staging / path.name)
    staging.rename(folder)
    return folder


def start(executable: Path, folder: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(folder.parent / "hf-home"),
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "false",
        "INFINITY_ONNX_DISABLE_OPTIMIZE": "true",
        "INFINITY_SERVED_MODEL_NAME": SERVED_NAME,
        "INFINITY_BATCH_SIZE": "32",
        "OMP_NUM_THREADS": str(threads),
    }
    command = [str(executable), "v2", "--model-id", ".", "--engine", "optimum", "--device", "cpu"]
    command += ["--pooling-method", "mean", "--host", "127.0.0.1", "--port", str(port)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command, cwd=folder, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"infinity exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise PeerError(f"infinity was not ready at {url}/health after {timeout_s:.0f} s")


def body(text: str) -> dict:
    return {"model": SERVED_NAME, "input": [text]}
