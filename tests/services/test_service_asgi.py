"""The BentoML service as an ASGI app in-process (Starlette TestClient runs its lifespan: load + warm-up)."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="module")
def classify_client(classifier_bundle):
    """One app and one TestClient for the module: BentoML's batching dispatcher binds to the event loop of the
    first client, and a second app in one process would register its Prometheus metrics twice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient warns about its httpx backend
        from starlette.testclient import TestClient

    from services.service import DaptService

    env = {
        "DAPT_BUNDLE_DIR": str(classifier_bundle),
        "DAPT_MODEL_NAME": "tiny",
        "DAPT_MODEL_VERSION": "5",
        "DAPT_MAX_TEXTS": "3",
        "DAPT_MAX_CHARS": "80",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with TestClient(DaptService.to_asgi()) as client:
            yield client


def test_classify_answers_with_model_and_predictions(classify_client):
    response = classify_client.post("/classify", json={"texts": ["Aspirin eased it", "no effect"]})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {
        "name": "tiny",
        "version": "5",
        "variant": body["model"]["variant"],
        "provider": body["model"]["provider"],
    }
    assert body["model"]["variant"] in {"fp32", "int8"}
    assert len(body["predictions"]) == 2
    assert set(body["predictions"][0]) == {"label", "score", "scores"}


@pytest.mark.parametrize(
    ("texts", "status", "field", "words"),
    [
        ([], 422, "texts", "empty"),
        (["fine", "   "], 422, "texts[1]", "whitespace"),
        (["a", "b", "c", "d"], 413, "texts", "at most 3"),
        (["x" * 81], 413, "texts[0]", "at most 80"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_limit(classify_client, texts, status, field, words):
    response = classify_client.post("/classify", json={"texts": texts})
    assert response.status_code == status
    assert response.json()["field"] == field
    assert words in response.json()["error"]


def test_wrong_type_and_wrong_endpoint_are_4xx(classify_client):
    wrong_type = classify_client.post("/classify", json={"texts": "not a list"})
    assert wrong_type.status_code == 400
    assert wrong_type.json()["detail"][0]["loc"] == ["texts"]
    wrong_endpoint = classify_client.post("/entities", json={"texts": ["Aspirin"]})
    assert wrong_endpoint.status_code == 400
    assert "/classify" in wrong_endpoint.json()["error"]


def test_metadata_readiness_and_openapi_samples(classify_client):
    metadata = classify_client.get("/metadata")
    assert metadata.status_code == 200
    assert metadata.json()["task"] == "classification"
    assert metadata.json()["version"] == "5"
    assert metadata.json()["labels"] == ["negative", "neutral", "positive"]
    assert classify_client.post("/metadata", json={}).json() == metadata.json()
    assert classify_client.get("/readyz").status_code == 200
    spec = classify_client.get("/docs.json").json()
    schema = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    sample = schema["properties"]["texts"]["default"]
    assert isinstance(sample, list) and sample  # the OpenAPI page's "try it" works as is
    assert classify_client.post("/classify", json={}).status_code == 200  # the sample default is served


def test_entities_through_the_service_instance(monkeypatch, ner_bundle):
    """The NER path on a DaptService instance (BentoML runs the same methods behind /entities)."""
    import asyncio

    from services.service import DaptService

    monkeypatch.setenv("DAPT_BUNDLE_DIR", str(ner_bundle))
    monkeypatch.setenv("DAPT_MODEL_NAME", "tiny-tagger")
    service = DaptService()
    text = "Aspirin helps migraine"
    response = asyncio.run(service.entities(texts=[text, "ibuprofen"]))
    assert response.model.name == "tiny-tagger"
    first = response.entities[0]
    assert [(e.text, text[e.start : e.end]) for e in first] == [(w, w) for w in text.split()]
    assert {e.label for e in first} == {"DRUG"}
    wrong = asyncio.run(service.classify(texts=["x"]))
    assert wrong.status_code == 400 and b"/entities" in wrong.body
    assert service.metadata()["task"] == "ner"


def test_missing_bundle_fails_at_start_with_a_clear_message(monkeypatch, tmp_path):
    from services.service import resolve_bundle_dir

    monkeypatch.setenv("DAPT_BUNDLE_DIR", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="DAPT_BUNDLE_DIR"):
        resolve_bundle_dir()
    monkeypatch.delenv("DAPT_BUNDLE_DIR")
    with pytest.raises(RuntimeError, match="no model to serve"):
        resolve_bundle_dir()
