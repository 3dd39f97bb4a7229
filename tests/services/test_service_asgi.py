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
        "DAPT_MAX_BODY_BYTES": "8192",
        "DAPT_RELOAD_POLL_S": "0",
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
    assert set(body["predictions"][0]) == {"label", "score", "scores", "truncated"}
    assert [p["truncated"] for p in body["predictions"]] == [False, False]


def test_a_text_longer_than_max_length_is_answered_and_said_to_be_truncated(classify_client):
    """The tiny bundle reads 24 tokens; a longer text is cut there, and the answer says so per text."""
    long_text = " ".join(["a"] * 30)  # 32 tokens with [CLS]/[SEP], within this client's DAPT_MAX_CHARS (80)
    response = classify_client.post("/classify", json={"texts": ["short", long_text]})
    assert response.status_code == 200, response.text
    assert [p["truncated"] for p in response.json()["predictions"]] == [False, True]
    spec = classify_client.get("/docs.json").json()
    described = spec["components"]["schemas"]["ClassPrediction"]["properties"]["truncated"]["description"]
    assert "max_length" in described


@pytest.mark.parametrize(
    ("body", "words"),
    [({}, "texts is required"), ({"text": ["typo"]}, "did you mean 'texts'")],
    ids=["empty-object", "text-typo"],
)
def test_a_request_without_texts_is_a_422_naming_the_field(classify_client, body, words):
    response = classify_client.post("/classify", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "texts" and words in response.json()["error"]


def test_the_batching_stage_is_not_reachable_from_outside(classify_client):
    """The old /classify_batch and /entities_batch skipped the public limits; with one hop they do not exist."""
    for route in ("/classify_batch", "/entities_batch"):
        response = classify_client.post(route, json={"texts": ["x"] * 100})
        assert response.status_code == 404, (route, response.status_code, response.text[:200])
    spec = classify_client.get("/docs.json").json()
    assert not [path for path in spec["paths"] if path.endswith("_batch")]


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
    assert wrong_type.status_code == 422
    assert wrong_type.json()["field"] == "texts" and "list of strings" in wrong_type.json()["error"]
    wrong_endpoint = classify_client.post("/entities", json={"texts": ["Aspirin"]})
    assert wrong_endpoint.status_code == 400
    assert "/classify" in wrong_endpoint.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (b'{"texts": ["a"', 400, "body", "not valid JSON"),
        (b"", 400, "body", "empty"),
        (b"null", 400, "body", "JSON object"),
        (b'["a"]', 400, "body", "JSON object"),
        (b'{"texts": ["\xff"]}'.replace(b"\\xff", b"\xff"), 400, "body", "not UTF-8"),
        (b'{"texts": [1]}', 422, "texts[0]", "must be a string"),
        (b'{"texts": [["nested"]]}', 422, "texts[0]", "must be a string"),
        (b'{"texts": {"a": 1}}', 422, "texts", "list of strings"),
        (b'{"texts": ["ok", "a \\ud800 b"]}', 422, "texts[1]", "unpaired UTF-16 surrogate"),
        (b'{"texts": ["\\u0000\\u200b\\u200f "]}', 422, "texts[0]", "only whitespace, control or format"),
        (b'{"texts": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, "body", "not valid JSON"),
        (b'{"texts": ["a"], "n": 1' + b"0" * 5000 + b"}", 400, "body", "not valid JSON"),
    ],
    ids=[
        "truncated-json",
        "empty-body",
        "null",
        "array-body",
        "invalid-utf8",
        "number-text",
        "nested-list",
        "object-texts",
        "lone-surrogate",
        "invisible-only",
        "deep-nesting",
        "huge-number",
    ],
)
def test_malformed_requests_are_4xx_json_naming_the_field(classify_client, body, status, field, words):
    response = classify_client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    "text",
    [
        "emoji 😀👍🏽 and flags 🇫🇮",
        "e\u0301 combining a\u0308\u0308\u0308 Z\u0335\u0336",
        "\u202eright-to-left\u202c \u200fmark",
        "NUL \u0000 inside",
        "中文和日本語のテキスト",
        "\ufeffbom first",
    ],
)
def test_odd_but_valid_unicode_is_answered(classify_client, text):
    response = classify_client.post("/classify", json={"texts": [text]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


def test_body_size_is_refused_before_parsing_declared_or_streamed(classify_client):
    big = b'{"texts": ["' + b"a" * 9000 + b'"]}'
    declared = classify_client.post("/classify", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json() == {
        "error": f"request body has {len(big)} bytes; at most 8192 bytes are accepted (DAPT_MAX_BODY_BYTES)",
        "field": "body",
        "limit": 8192,
    }

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"b" * 1000
        yield b'"]}'

    streamed = classify_client.post(
        "/classify", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert "exceeds 8192 bytes" in streamed.json()["error"]
    lying = classify_client.post(
        "/classify",
        content=b'{"texts": ["a"]}',
        headers={"content-type": "application/json", "content-length": "x"},
    )
    assert lying.status_code == 400
    assert classify_client.post("/classify", json={"texts": ["still fine"]}).status_code == 200


def test_admin_reload_is_disabled_without_a_token_and_needs_the_right_one(classify_client, monkeypatch):
    monkeypatch.delenv("DAPT_ADMIN_TOKEN", raising=False)
    disabled = classify_client.post("/admin/reload")
    assert disabled.status_code == 403 and "DAPT_ADMIN_TOKEN" in disabled.json()["error"]
    monkeypatch.setenv("DAPT_ADMIN_TOKEN", "s3cret")
    assert classify_client.post("/admin/reload").status_code == 401
    wrong = classify_client.post("/admin/reload", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    auth = {"authorization": "Bearer s3cret"}
    bad_version = classify_client.post("/admin/reload", json={"version": "two"}, headers=auth)
    assert bad_version.status_code == 422 and bad_version.json()["field"] == "version"
    # served from a folder without an alias: nothing says what to reload to
    nothing = classify_client.post("/admin/reload", headers=auth)
    assert nothing.status_code == 422 and "DAPT_MODEL_ALIAS" in nothing.json()["error"]
    assert classify_client.get("/metadata").json()["version"] == "5"  # still serving
    assert classify_client.get("/admin/reload", headers=auth).status_code == 405
    assert classify_client.get("/admin/status").status_code == 401
    status = classify_client.get("/admin/status", headers=auth)
    assert status.status_code == 200 and status.json()["bundle_dir"].endswith("bundle")


def test_metadata_readiness_and_openapi_samples(classify_client, monkeypatch):
    metadata = classify_client.get("/metadata")
    assert metadata.status_code == 200
    assert metadata.json()["task"] == "classification"
    assert metadata.json()["version"] == "5"
    assert metadata.json()["labels"] == ["negative", "neutral", "positive"]
    assert metadata.json()["max_body_bytes"] == 8192
    assert metadata.json()["last_reload_error"] is None and metadata.json()["alias"] is None
    assert classify_client.post("/metadata", json={}).json() == metadata.json()
    assert classify_client.post("/metadata", content=b"{not json").status_code == 200  # takes no input
    assert classify_client.get("/readyz").status_code == 200
    spec = classify_client.get("/docs.json").json()
    schema = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "texts" in schema["required"] and "default" not in schema["properties"]["texts"]
    sample = schema["properties"]["texts"]["examples"][0]
    assert isinstance(sample, list) and sample  # the OpenAPI page's "try it" has a sample to send
    assert classify_client.post("/classify", json={"texts": sample}).status_code == 200
    # The public answer names no file of the server (the operator's GET /admin/status does).
    assert "bundle_dir" not in metadata.json()
    monkeypatch.setenv("DAPT_ADMIN_TOKEN", "s3cret")
    operator_view = classify_client.get("/admin/status", headers={"authorization": "Bearer s3cret"})
    assert operator_view.status_code == 200
    assert operator_view.json()["bundle_dir"] not in metadata.text


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
    assert response.truncated == [False, False]
    first = response.entities[0]
    assert [(e.text, text[e.start : e.end]) for e in first] == [(w, w) for w in text.split()]
    assert {e.label for e in first} == {"DRUG"}
    wrong = asyncio.run(service.classify(texts=["x"]))
    assert wrong.status_code == 400 and b"/entities" in wrong.body
    assert asyncio.run(service.metadata())["task"] == "ner"
    service.slot.stop()


def test_missing_bundle_fails_at_start_with_a_clear_message(monkeypatch, tmp_path):
    from services.service import resolve_bundle_dir

    monkeypatch.setenv("DAPT_BUNDLE_DIR", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="DAPT_BUNDLE_DIR"):
        resolve_bundle_dir()
    monkeypatch.delenv("DAPT_BUNDLE_DIR")
    with pytest.raises(RuntimeError, match="no model to serve"):
        resolve_bundle_dir()
