"""Live servers: `bentoml serve` on loopback, the serving process's imports, and `bentoml build` (offline)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bentoml_serve_answers_classify_and_batches_concurrent_requests(classifier_bundle, tmp_path):
    port = _free_port()
    env = os.environ | {
        "DAPT_BUNDLE_DIR": str(classifier_bundle),
        "DAPT_MODEL_NAME": "tiny",
        "DAPT_MODEL_VERSION": "9",
        "DAPT_ORT_THREADS": "1",
    }
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "services.service:DaptService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("server not ready within 90 s:\n" + (tmp_path / "serve.log").read_text()[-3000:])

        response = httpx.post(f"{url}/classify", json={"texts": ["Aspirin eased it", "ok"]}, timeout=30)
        assert response.status_code == 200
        body = response.json()
        assert body["model"]["name"] == "tiny" and body["model"]["version"] == "9"
        assert len(body["predictions"]) == 2
        assert httpx.post(f"{url}/classify", json={"texts": []}, timeout=30).status_code == 422

        def classify(i: int) -> dict:
            return httpx.post(f"{url}/classify", json={"texts": [f"text {i}", "more"]}, timeout=60).json()

        requests = 48
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(classify, range(requests)))
        assert all(len(a["predictions"]) == 2 for a in answers)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        batches = re.search(r'adaptive_batch_size_count\{method_name="classify_batch"[^}]*\} (\S+)', metrics)
        assert batches is not None, "the batching stage was not used"
        # 2 single requests before + 48 concurrent ones reached the batcher in fewer calls than requests
        assert float(batches.group(1)) < requests + 2
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            exit_code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
            pytest.fail("server did not stop within 30 s of SIGTERM")
        log.close()
    assert exit_code == 0


@pytest.mark.timeout(120)
def test_serving_process_never_imports_torch_or_transformers(classifier_bundle):
    script = textwrap.dedent(
        f"""
        import json, os, sys
        os.environ["DAPT_BUNDLE_DIR"] = {str(classifier_bundle)!r}
        from services.service import DaptService
        from services.predictor import OnnxPredictor
        service = DaptService()
        assert len(service.classify_batch(["hello there"])) == 1
        OnnxPredictor(os.environ["DAPT_BUNDLE_DIR"]).classify(["again"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
        print(json.dumps({{"heavy": heavy, "bentoml": "bentoml" in sys.modules}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bentoml"] is True  # the check ran in a real serving import graph
    assert report["heavy"] == []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_bento_build_packs_the_model_and_writes_a_dockerfile(classifier_bundle, ner_bundle, isolated_home):
    from dapt.bento import BentoError, build_bento, import_bundle_to_bentoml

    assert os.environ["BENTOML_HOME"].startswith(str(isolated_home))  # never the user's store
    tag = import_bundle_to_bentoml(classifier_bundle, "tiny-cls", 1, {"metrics": {"macro_f1": 0.5}})
    assert tag == "tiny-cls:1"
    assert import_bundle_to_bentoml(classifier_bundle, "tiny-cls", 1) == tag  # same files: same tag
    with pytest.raises(BentoError, match="already exists"):
        import_bundle_to_bentoml(ner_bundle, "tiny-cls", 1)

    stored = Path(os.environ["BENTOML_HOME"]) / "models" / "tiny-cls" / "1"
    assert (stored / "serving.json").is_file() and (stored / "onnx" / "int8" / "model.onnx").is_file()
    assert not (stored / "pytorch").exists()  # serving files only

    bento_tag, dockerfile = build_bento(tag)
    assert dockerfile.is_file() and "FROM " in dockerfile.read_text()
    bento_yaml = (dockerfile.parents[2] / "bento.yaml").read_text()
    assert "tag: tiny-cls:1" in bento_yaml  # the service declared the model, so the bento references it
    assert "bento_model: tiny-cls:1" in bento_yaml
    requirements = (dockerfile.parents[1] / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "torch" not in requirements
    sources = {
        p.relative_to(dockerfile.parents[2] / "src").as_posix()
        for p in (dockerfile.parents[2] / "src").rglob("*.py")
    }
    assert "services/service.py" in sources and "models/bundle.py" in sources
    assert "models/export.py" not in sources  # no training code in the image
