"""Serving and browsing a registry whose artifacts live on S3 (moto's standalone server on 127.0.0.1, a real S3
API, never a mock): the installed `dapt serve` downloads a version into an empty cache, checks it and answers
over HTTP; a corrupted object is refused while the served version keeps answering; two replicas on one
PostgreSQL registry follow one alias; the registry UI shows a version, its plots and card from S3.

Figures (requests, errors, swap delays) are printed: run with `pytest -s`.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from models.registry.store import Registry
from tests.pg_server import SKIP_REASON, new_database, postgres_bindir, postgres_server
from tests.s3_server import moto_server, new_bucket, s3_filesystem
from tests.services.helpers import DAPT, MINIMAL_EVIDENCE, dapt_env, dapt_serve, until

pytestmark = pytest.mark.integration
TOKEN = "s3cret"
TEXTS = ["Aspirin eased the headache.", "No adverse events were reported", "fine"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An s3fs filesystem on a moto server that lives for this module (the AWS variables point at it, and the
    servers started here inherit them)."""
    with moto_server(tmp_path_factory.mktemp("moto")):
        yield s3_filesystem()


def _s3_env(url: str, root: str, cache: Path, poll_s: float) -> dict[str, str]:
    return {
        "DAPT_REGISTRY_URL": url,
        "DAPT_ARTIFACT_ROOT": root,
        "DAPT_ARTIFACT_CACHE": str(cache),
        "DAPT_RELOAD_POLL_S": str(poll_s),
        "DAPT_ADMIN_TOKEN": TOKEN,
    }


def _flip_object(s3, key: str) -> None:
    """Change one byte of a stored object (same size: only the sha256 can tell)."""
    data = bytearray(s3.cat_file(key))
    data[len(data) // 2] ^= 0xFF
    s3.pipe_file(key, bytes(data))


def _served_variant(bundle: Path) -> str:
    """The ONNX file a CPU server loads from this bundle (services.predictor's choice)."""
    from models.registry.bundle import ServingSpec

    spec = ServingSpec.read(bundle)
    return spec.variants[
        spec.preferred_cpu_variant if spec.preferred_cpu_variant in spec.variants else "fp32"
    ]


# ----------------------------------------------------------------------------------------------- load loop
@dataclass
class LoadLoop:
    """Clients POSTing /classify to each URL until stopped, bounded in count (per client) and time.

    Each answer is kept as (url, sent at, answered at, HTTP status or the exception's name, version)."""

    urls: list[str]
    clients_per_url: int = 2
    max_requests: int = 3000
    max_seconds: float = 150.0
    seen: list[tuple[str, float, float, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, url: str) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=url, timeout=30) as client:
            for index in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                sent = time.monotonic()
                try:
                    response = client.post("/classify", json={"texts": [f"is this still served? {index}"]})
                    outcome = str(response.status_code)
                    version = response.json()["model"]["version"] if response.status_code == 200 else "-"
                except httpx.HTTPError as error:
                    outcome, version = type(error).__name__, "-"
                self.seen.append((url, sent, time.monotonic(), outcome, version))  # list.append: thread-safe

    def __enter__(self) -> LoadLoop:
        for url in self.urls:
            for _ in range(self.clients_per_url):
                thread = threading.Thread(target=self._client, args=(url,), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def failed(self) -> list[tuple]:
        return [s for s in self.seen if s[3] != "200"]

    def first(self, url: str, version: str) -> float | None:
        """When ``url`` first answered with ``version`` (monotonic seconds)."""
        return min((s[2] for s in self.seen if s[0] == url and s[4] == version), default=None)


# ----------------------------------------------------------------------------------------------- serve from S3
@dataclass
class S3Serving:
    url: str
    registry: Registry
    env: dict[str, str]
    cache: Path
    root: Path
    bucket_root: str


@pytest.fixture(scope="module")
def s3_serving(s3, classifier_bundle, tmp_path_factory) -> Iterator[S3Serving]:
    """`dapt serve --name tiny` (alias production, v1) on a registry whose artifacts are on S3, started with an
    empty artifact cache of its own; the test process registers through another cache (another host)."""
    root = tmp_path_factory.mktemp("s3_serving")
    bucket_root = f"s3://{new_bucket(s3)}/dapt"
    url = f"sqlite:///{root / 'registry.db'}"
    registry = Registry(url, bucket_root, cache_dir=root / "writer-cache")
    registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    registry.set_alias("tiny", "production", 1, reason="test: first deploy")
    cache = root / "serve-cache"
    env = _s3_env(url, bucket_root, cache, poll_s=0.5)
    with dapt_serve(root, "--name", "tiny", **env) as served:
        yield S3Serving(served, registry, env, cache, root, bucket_root)
    registry.dispose()


@pytest.mark.timeout(600)
def test_dapt_serve_downloads_a_checked_copy_from_s3_and_answers_like_the_bundle(
    s3, s3_serving, classifier_bundle
):
    from services.predictor import OnnxPredictor

    served, v1 = s3_serving, s3_serving.registry.get_version("tiny", 1)
    assert v1.location.startswith(served.bucket_root + "/tiny/1-")
    # The server's cache held nothing before: the version it serves was downloaded into a folder named by the
    # manifest's sha256, every file of which is the stored object.
    folders = [p.name for p in served.cache.iterdir() if not p.name.startswith(".")]
    assert folders == [v1.manifest_sha256]
    copy = served.cache / v1.manifest_sha256
    key = v1.location.removeprefix("s3://")
    stored = sorted(found.removeprefix(key + "/") for found in s3.find(key))
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == stored
    variant = _served_variant(classifier_bundle)
    assert (copy / variant).read_bytes() == s3.cat_file(f"{key}/{variant}")

    metadata = httpx.get(f"{served.url}/metadata", timeout=10).json()
    assert (metadata["name"], metadata["version"], metadata["alias"]) == ("tiny", "1", "production")
    operator = httpx.get(
        f"{served.url}/admin/status", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
    ).json()
    assert operator["bundle_dir"] == str(copy)

    response = httpx.post(f"{served.url}/classify", json={"texts": TEXTS}, timeout=30)
    assert response.status_code == 200 and response.json()["model"]["version"] == "1"
    expected = OnnxPredictor(classifier_bundle).classify(TEXTS)  # the exported bundle, in-process
    for got, want in zip(response.json()["predictions"], expected, strict=True):
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


@pytest.mark.timeout(600)
def test_a_corrupted_object_in_s3_is_refused_and_the_served_version_keeps_answering(
    s3, s3_serving, classifier_bundle
):
    served = s3_serving
    v2 = served.registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    variant = _served_variant(classifier_bundle)
    _flip_object(s3, f"{v2.location.removeprefix('s3://')}/{variant}")

    with LoadLoop([served.url], max_requests=2000, max_seconds=90) as load:
        until(lambda: len(load.seen) >= 5, 30, "the load to start")
        served.registry.set_alias("tiny", "production", 2, reason="test: a corrupted promotion")
        metadata = until(
            lambda: (m := httpx.get(f"{served.url}/metadata", timeout=10).json())["last_reload_error"] and m,
            60,
            "the replica to try (and refuse) v2",
        )
        time.sleep(0.5)  # keep the load on after the refusal
    print(
        f"\n[swap] s3 corrupted v2: {len(load.seen)} requests during the refusal, {len(load.failed())} failed"
    )
    assert not load.failed(), load.failed()[:5]
    assert {s[4] for s in load.seen} == {"1"}  # nothing served changed
    assert metadata["version"] == "1" and metadata["last_reload_error"]["version"] == "v2"
    assert "verification" in metadata["last_reload_error"]["error"]
    raw = httpx.get(
        f"{served.url}/admin/status", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
    ).json()["last_reload_error"]["error"]
    print(f"[swap] s3 corrupted v2 refused: {raw[:200]}")
    assert f"{v2.location}/{variant} differs from the manifest" in raw and "v1 keeps serving" in raw
    # The bad download never reached the cache: nothing half-checked is left to load later.
    assert not (served.cache / v2.manifest_sha256).exists()
    assert not any((served.cache / ".downloading").iterdir())
    answer = httpx.post(f"{served.url}/classify", json={"texts": TEXTS}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"

    # Starting a server on that version is refused before anything listens, with the object named.
    refused = subprocess.run(
        [str(DAPT), "serve", "--name", "tiny", "--version", "2", "--port", "1"],
        env=dapt_env(served.root, **{**served.env, "DAPT_ARTIFACT_CACHE": str(served.root / "cold")}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{variant} differs from the manifest" in refused.stderr and "Traceback" not in refused.stderr
    served.registry.set_alias("tiny", "production", 1, reason="test: back to the intact version")


# ----------------------------------------------------------------------------------------------- replicas
@pytest.fixture(scope="module")
def postgres():
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    with postgres_server(bindir) as server:
        yield server


@pytest.mark.timeout(600)
def test_two_replicas_on_postgres_and_s3_follow_one_alias_with_no_failed_request(
    s3, postgres, classifier_bundle, tmp_path
):
    poll_s = 1.0
    url, bucket_root = new_database(*postgres), f"s3://{new_bucket(s3)}/dapt"
    registry = Registry(url, bucket_root, cache_dir=tmp_path / "writer-cache")
    for _ in range(2):
        registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    registry.set_alias("tiny", "production", 1, reason="test: first deploy")
    with ExitStack() as stack:
        replicas = [  # each with its own cache, as on two hosts
            stack.enter_context(
                dapt_serve(
                    tmp_path, "--name", "tiny", **_s3_env(url, bucket_root, tmp_path / f"cache-{i}", poll_s)
                )
            )
            for i in range(2)
        ]
        with LoadLoop(replicas) as load:
            until(lambda: all(load.first(r, "1") for r in replicas), 60, "both replicas to answer v1")
            moved_at = time.monotonic()
            registry.set_alias("tiny", "production", 2, reason="test: promote")
            until(
                lambda: all(load.first(r, "2") for r in replicas), poll_s + 90, "both replicas to answer v2"
            )
            time.sleep(1.0)  # keep the load on after the swap
        metadata = [httpx.get(f"{r}/metadata", timeout=10).json() for r in replicas]

    failed = load.failed()
    delays = [load.first(r, "2") - moved_at for r in replicas]  # type: ignore[operator]
    reloads = [m["last_reload"]["seconds"] for m in metadata]
    print(
        f"\n[swap] replicas: {len(load.seen)} requests, {len(failed)} failed; v2 answered "
        f"{delays[0]:.2f} s / {delays[1]:.2f} s after the alias moved (poll {poll_s} s; reloads took "
        f"{reloads[0]:.2f} s / {reloads[1]:.2f} s)"
    )
    assert not failed, failed[:5]
    for replica, meta, delay, cache_index in zip(replicas, metadata, delays, range(2), strict=True):
        assert meta["version"] == "2" and meta["last_reload"]["from_version"] == "1"
        assert meta["last_reload"]["reason"] == "alias 'production' moved to v2"
        # Noticed within one poll interval; the rest is the reload itself (download, checks, warm-up, probe)
        # and scheduling on a busy host.
        assert delay <= poll_s + meta["last_reload"]["seconds"] + 5.0, (delay, meta["last_reload"])
        # Requests sent after a replica first answered v2 are all answered by v2 (no flapping back).
        switched = load.first(replica, "2")
        after = {s[4] for s in load.seen if s[0] == replica and s[1] > switched}
        assert after == {"2"}, after
        # Each replica downloaded v2 into its own cache from S3.
        assert (tmp_path / f"cache-{cache_index}" / registry.get_version("tiny", 2).manifest_sha256).is_dir()
    registry.dispose()


# ----------------------------------------------------------------------------------------------- the UI
@pytest.mark.timeout(600)
def test_the_ui_shows_versions_plots_and_cards_from_s3_without_downloading_the_weights(s3, tmp_path):
    import warnings

    with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2; the httpx client works the same
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from services.ui import create_app
    from tests.services.ui_registry import populate

    bucket_root = f"s3://{new_bucket(s3)}/dapt"
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    populate(tmp_path, Registry(url, bucket_root, cache_dir=tmp_path / "writer-cache")).dispose()
    ui_cache = tmp_path / "ui-cache"
    registry = Registry(
        url, bucket_root, cache_dir=ui_cache
    )  # the UI's host: nothing of the versions on disk
    client = TestClient(create_app(registry, admin_token=""))

    page = client.get("/models/finsent/2")
    assert page.status_code == 200
    for plot in ("confusion_matrix.png", "reliability.png"):
        assert f'src="/models/finsent/2/files/reports/{plot}"' in page.text
    card = page.text.split('id="model-card"', 1)[1]
    assert "<h1>finsent v2</h1>" in card and 'id="card-error"' not in page.text
    v2 = registry.get_version("finsent", 2)
    key = v2.location.removeprefix("s3://")
    for plot in ("confusion_matrix.png", "reliability.png"):
        response = client.get(f"/models/finsent/2/files/reports/{plot}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == s3.cat_file(f"{key}/reports/{plot}")
    assert client.get("/models/finsent/2/files/README.md").status_code == 200
    diff = client.get("/models/finsent/diff/1/2")
    assert (
        diff.status_code == 200 and 'src="/models/finsent/1/files/reports/confusion_matrix.png"' in diff.text
    )
    assert client.get("/models/finsent/2/validation").status_code == 200
    assert client.get("/models/finsent/2/files/reports/nothere.png").status_code == 404  # not in the manifest
    # Only the files shown were read: no version was downloaded into the UI's cache.
    assert not ui_cache.exists() or not [p for p in ui_cache.iterdir() if not p.name.startswith(".")]

    # A changed object is refused, not shown: a plot answers 409, a card is replaced by the error.
    _flip_object(s3, f"{key}/reports/reliability.png")
    changed = client.get("/models/finsent/2/files/reports/reliability.png")
    assert changed.status_code == 409 and "changed since registration" in changed.text
    _flip_object(s3, f"{key}/README.md")
    page = client.get("/models/finsent/2")
    assert page.status_code == 200 and 'id="card-error"' in page.text and 'id="model-card"' not in page.text
    # A replaced manifest is refused by the database's digest.
    s3.pipe_file(f"{key}/manifest.json", b'{"files": {}}')
    refused = client.get("/models/finsent/2/files/reports/confusion_matrix.png")
    assert refused.status_code == 409 and "differs from the registry" in refused.text
    registry.dispose()
