"""The registry with its artifacts on S3: a real S3 API (moto's standalone server on 127.0.0.1), never a mock.

Covers: register (upload, then commit), load through the local cache with every file checked against the
manifest, a corrupted object refused (and never cached), a registration killed mid-upload or failing midway
leaving no visible version, and `dapt models register` run as users run it.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.registry.store import ChecksumError, ModelNotFound, Registry
from tests.models.test_registry import make_bundle, make_evidence, pending_rows
from tests.s3_server import moto_server, new_bucket, s3_filesystem

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An s3fs filesystem on a moto server that lives for this module (the AWS variables point at it)."""
    with moto_server(tmp_path_factory.mktemp("moto")):
        yield s3_filesystem()


@pytest.fixture()
def root(s3) -> str:
    """A fresh bucket per test; the registry keeps its versions under the `dapt` prefix."""
    return f"s3://{new_bucket(s3)}/dapt"


def _registry(tmp_path: Path, root: str, cache: str = "cache", **kwargs) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'registry.db'}", root, cache_dir=tmp_path / cache, **kwargs)


def _objects(s3, url: str) -> list[str]:
    base = url.removeprefix("s3://")
    return sorted(path.removeprefix(base + "/") for path in s3.find(base))


def test_register_uploads_then_a_reader_loads_a_checked_copy_from_its_cache(s3, root, tmp_path):
    bundle = make_bundle(tmp_path / "src")
    writer = _registry(tmp_path, root, "writer-cache")
    version = writer.register("finsent", bundle, make_evidence(0.8))

    assert version.version == 1 and version.location.startswith(f"{root}/finsent/1-")
    stored = _objects(s3, version.location)
    manifest = json.loads(s3.cat_file(version.location.removeprefix("s3://") + "/manifest.json"))
    assert stored == sorted([*manifest["files"], "manifest.json"])
    assert {"serving.json", "onnx/fp32/model.onnx", "evidence.json", "README.md"} <= set(stored)
    assert not (tmp_path / "writer-cache" / ".staging").exists() or not any(
        (tmp_path / "writer-cache" / ".staging").iterdir()
    )  # nothing staged is left behind

    # Another process (here: another registry on the same database) loads it through its own cache.
    reader = _registry(tmp_path, root, "reader-cache")
    path = reader.load_path("finsent", 1)
    assert path == tmp_path / "reader-cache" / version.manifest_sha256
    assert (path / "onnx" / "fp32" / "model.onnx").read_bytes() == (
        bundle / "onnx" / "fp32" / "model.onnx"
    ).read_bytes()
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == stored
    assert reader.list_versions()[0].location == version.location

    # The cached copy is checked again on every load: a byte changed there is refused, with the fix named.
    cached = path / "onnx" / "fp32" / "model.onnx"
    cached.chmod(0o644)
    data = bytearray(cached.read_bytes())
    data[10] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"onnx/fp32/model.onnx changed .*delete the cached copy"):
        reader.load_path("finsent", 1)


def test_a_corrupted_object_is_refused_and_never_reaches_the_cache(s3, root, tmp_path):
    registry = _registry(tmp_path, root)
    version = registry.register("finsent", make_bundle(tmp_path / "src"), make_evidence(0.8))
    weights = version.location.removeprefix("s3://") + "/onnx/fp32/model.onnx"
    data = bytearray(s3.cat_file(weights))
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    s3.pipe_file(weights, bytes(data))

    with pytest.raises(ChecksumError, match=r"finsent v1: .*onnx/fp32/model.onnx differs from the manifest"):
        registry.load_path("finsent", 1)
    cache = tmp_path / "cache"
    assert not (cache / version.manifest_sha256).exists()
    assert not any((cache / ".downloading").iterdir())  # the half-checked download was thrown away

    # A replaced manifest (one that would vouch for the bad bytes) is refused by the database's digest.
    manifest_key = version.location.removeprefix("s3://") + "/manifest.json"
    manifest = json.loads(s3.cat_file(manifest_key))
    manifest["files"]["onnx/fp32/model.onnx"]["sha256"] = "0" * 64
    s3.pipe_file(manifest_key, json.dumps(manifest).encode())
    with pytest.raises(ChecksumError, match=r"manifest.json was modified"):
        registry.load_path("finsent", 1)
    assert not (cache / version.manifest_sha256).exists()


def _fail_at_second_upload(calls: list[str], stage: str) -> None:
    calls.append(stage)
    if calls.count("uploading") == 2:
        raise ConnectionError("injected: the network went away mid-upload")


def test_an_upload_that_fails_midway_registers_nothing_and_removes_what_it_uploaded(s3, root, tmp_path):
    calls: list[str] = []
    registry = _registry(tmp_path, root, on_step=functools.partial(_fail_at_second_upload, calls))
    with pytest.raises(Exception, match="injected"):
        registry.register("finsent", make_bundle(tmp_path / "src"), make_evidence(0.8))
    assert calls.count("uploading") == 2 and "marked-ready" not in calls
    assert registry.list_versions() == [] and pending_rows(registry) == 0
    assert _objects(s3, root) == []  # the one object that made it up was deleted again


def _sleep_at_upload(stage: str) -> None:
    if stage == "uploading":
        time.sleep(60)


def _register_and_hang(url: str, root: str, cache: str, bundle: str, lease_s: float) -> None:
    registry = Registry(url, root, cache_dir=cache, lease_s=lease_s, on_step=_sleep_at_upload)
    registry.register("finsent", Path(bundle), make_evidence(run_id="doomed"))


def test_a_registration_killed_mid_upload_is_never_visible_and_is_cleaned_up(s3, root, tmp_path):
    lease = 1.5
    registry = _registry(tmp_path, root, lease_s=lease)
    bundle = make_bundle(tmp_path / "src", extra_files=3)
    child = multiprocessing.get_context("spawn").Process(
        target=_register_and_hang,
        args=(registry.url, root, str(tmp_path / "cache"), str(bundle), lease),
    )
    child.start()
    deadline = time.monotonic() + 120
    while not _objects(s3, root):  # the first object is up; the step observer holds it there
        if time.monotonic() > deadline or not child.is_alive():
            child.kill()
            pytest.fail("the child never started uploading")
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL

    uploaded = _objects(s3, root)
    assert len(uploaded) == 1 and not uploaded[0].endswith("manifest.json")  # a partial version is up...
    assert registry.list_versions() == [] and pending_rows(registry) == 1  # ...and nobody sees it
    with pytest.raises(ModelNotFound):
        registry.load_path("finsent")

    time.sleep(lease + 0.5)  # the dead process's lease runs out; the next registration cleans up after it
    version = registry.register("finsent", bundle, make_evidence(run_id="next"))
    assert version.version == 1 and version.evidence["lineage"]["run_id"] == "next"
    assert pending_rows(registry) == 0
    assert {key.split("/")[1] for key in _objects(s3, root)} == {version.location.rsplit("/", 1)[1]}
    registry.load_path("finsent", 1)


# ------------------------------------------------------------------------------------------- the CLI
def _dapt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("dapt")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "dapt.cli"]
    full_env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [*command, "models", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=180
    )


def test_dapt_models_register_imports_a_bundle_into_s3_and_refuses_a_bad_one(s3, root, tmp_path):
    env = {
        "DAPT_REGISTRY_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "DAPT_ARTIFACT_ROOT": root,
        "DAPT_ARTIFACT_CACHE": str(tmp_path / "cache"),
        "DAPT_HOME": str(tmp_path / "home"),
    }
    bundle = make_bundle(tmp_path / "src")
    (bundle / "evidence.json").write_text(json.dumps(make_evidence(0.81, run_id="other-trainer")))

    done = _dapt(env, "register", "finsent", str(bundle))
    assert done.returncode == 0, done.stderr
    assert "registered finsent v1" in done.stdout and f"at {root}/finsent/1-" in done.stdout
    assert "evidence: " + str(bundle / "evidence.json") in done.stdout

    shown = _dapt(env, "show", "finsent", "--verify", "--json")  # downloads, checks, reports
    assert shown.returncode == 0, shown.stderr
    version = json.loads(shown.stdout)
    assert version["verified"] is True and version["metrics"]["macro_f1"] == 0.81
    assert version["evidence"]["lineage"]["run_id"] == "other-trainer"
    assert version["evidence"]["imported"]["bundle"] == str(bundle)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"onnx")
    refused = _dapt(env, "register", "finsent", str(broken))
    assert refused.returncode == 2
    assert "serving.json is missing" in refused.stderr and "Traceback" not in refused.stderr
    bad_evidence = _dapt(env, "register", "finsent", str(bundle), "--evidence", str(broken / "model.onnx"))
    assert bad_evidence.returncode == 2 and "not readable JSON" in bad_evidence.stderr

    registry = Registry(env["DAPT_REGISTRY_URL"], root, cache_dir=tmp_path / "cache")
    assert [v.version for v in registry.list_versions()] == [1]  # nothing registered by the failures
    assert _objects(s3, root) and {key.split("/")[1] for key in _objects(s3, root)} == {
        version["location"].rsplit("/", 1)[1]
    }


def test_a_local_registry_never_imports_the_object_store_stack(tmp_path):
    """The serving process imports the registry: s3fs/fsspec load only when the artifact root is a URL."""
    code = (
        "import sys; from models.registry.store import Registry; "
        f"Registry('sqlite:///{tmp_path / 'r.db'}', '{tmp_path / 'artifacts'}').list_versions(); "
        "print(sorted(m for m in ('fsspec', 's3fs', 'botocore') if m in sys.modules))"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
