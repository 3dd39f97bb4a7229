"""The ONNX Runtime predictor alone: output shapes, character offsets, padding, variants, checksums."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.hashing import file_sha256 as sha256_of
from services.predictor import BundleError, ChecksumError, OnnxPredictor, WrongTaskError

CLASS_LABELS = ["negative", "neutral", "positive"]  # as exported in conftest.py
NER_TAGS = ["O", "B-DRUG", "I-DRUG", "B-DISEASE", "I-DISEASE"]


@pytest.fixture(scope="module")
def classifier(classifier_bundle):
    return OnnxPredictor(classifier_bundle)


@pytest.fixture(scope="module")
def tagger(ner_bundle):
    return OnnxPredictor(ner_bundle)


def test_classify_returns_one_distribution_per_text(classifier):
    results = classifier.classify(["Aspirin eased the headache.", "ok", "a third, longer text about nothing"])
    assert len(results) == 3
    for result in results:
        assert set(result) == {"label", "score", "scores", "truncated"}
        assert result["truncated"] is False
        assert list(result["scores"]) == CLASS_LABELS  # logit order kept
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["score"] == max(result["scores"].values())
        assert result["label"] == max(result["scores"], key=result["scores"].get)
    assert classifier.classify([]) == []


def test_cpu_prefers_int8_and_reports_the_provider_that_runs(classifier):
    info = classifier.info()
    assert info["variant"] == classifier.spec.preferred_cpu_variant
    assert info["provider"] == classifier.session.get_providers()[0]
    assert {"name", "version", "task", "labels", "max_length"} <= set(info)
    if info["provider"] == "CPUExecutionProvider":
        assert info["variant"] == "int8"  # parity passed on the tiny model, so export prefers int8 on CPU


def test_batches_pad_to_the_longest_text_not_to_max_length(classifier):
    _, feeds = classifier._encode(["short", "a somewhat longer sentence of words"])
    longest = len(classifier.tokenizer.encode("a somewhat longer sentence of words").ids)
    assert feeds["input_ids"].shape == (2, longest)
    assert longest < classifier.spec.max_length
    assert feeds["attention_mask"][0].sum() < feeds["attention_mask"][1].sum()
    _, long_feeds = classifier._encode(["word " * 200])
    assert long_feeds["input_ids"].shape[1] == classifier.spec.max_length  # truncated


def test_padding_does_not_change_a_texts_prediction(classifier_bundle):
    # fp32: dynamic int8 scales activations per batch, so its logits move slightly with batch content
    predictor = OnnxPredictor(classifier_bundle, variant="fp32")
    alone = predictor.logits(["ok"])[0]
    padded = predictor.logits(["ok", "a much longer text that forces padding of the first one"])[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_entities_have_offsets_that_point_at_the_words(tagger):
    texts = ["Aspirin helps migraine", "  take  ibuprofenhydrochloride daily"]
    spans = tagger.entities(texts)
    assert len(spans) == 2
    for text, entities in zip(texts, spans, strict=True):
        assert [e["text"] for e in entities] == text.split()  # every word is B-DRUG: one span per word
        for entity in entities:
            assert text[entity["start"] : entity["end"]] == entity["text"]
            assert entity["label"] == "DRUG"
            assert 0.0 < entity["score"] <= 1.0
    # a word split into several word-pieces stays one span covering the whole word
    assert len(tagger.tokenizer.encode("ibuprofenhydrochloride", add_special_tokens=False).ids) > 1
    assert spans[1][1]["text"] == "ibuprofenhydrochloride"


def test_bio_tags_merge_into_typed_spans(tagger):
    text = "aspirin tablets ease migraine headaches"
    encoding = tagger.tokenizer.encode_batch([text])[0]
    words = [w for w in encoding.word_ids]
    wanted = {0: "B-DRUG", 1: "I-DRUG", 2: "O", 3: "B-DISEASE", 4: "I-DISEASE"}
    probabilities = np.full((len(words), len(NER_TAGS)), 0.01, dtype=np.float32)
    for token, word in enumerate(words):
        tag = wanted.get(word, "O") if word is not None else "O"
        probabilities[token, NER_TAGS.index(tag)] = 0.9
    spans = tagger._spans(text, encoding, probabilities)
    assert [(s["text"], s["label"]) for s in spans] == [
        ("aspirin tablets", "DRUG"),
        ("migraine headaches", "DISEASE"),
    ]
    assert spans[0]["score"] == pytest.approx(0.9)


def _spans_for(tagger, text: str, word_tags: dict[int, str]):
    encoding = tagger.tokenizer.encode_batch([text])[0]
    probabilities = np.full((len(encoding.word_ids), len(NER_TAGS)), 0.01, dtype=np.float32)
    for token, word in enumerate(encoding.word_ids):
        tag = word_tags.get(word, "O") if word is not None else "O"
        probabilities[token, NER_TAGS.index(tag)] = 0.9
    return [(s["text"], s["label"]) for s in tagger._spans(text, encoding, probabilities)]


def test_an_i_tag_that_continues_no_span_is_not_an_entity(tagger):
    # strict IOB2, as evaluation's seqeval scores it: only B-X opens a span
    text = "aspirin and ibuprofen ease migraine headaches"
    after_o = {0: "B-DRUG", 1: "O", 2: "I-DRUG", 3: "I-DRUG"}
    assert _spans_for(tagger, text, after_o) == [("aspirin", "DRUG")]
    after_other_type = {0: "B-DRUG", 1: "I-DISEASE", 2: "I-DRUG", 4: "B-DISEASE", 5: "I-DISEASE"}
    assert _spans_for(tagger, text, after_other_type) == [
        ("aspirin", "DRUG"),
        ("migraine headaches", "DISEASE"),
    ]
    assert _spans_for(tagger, text, {0: "I-DRUG", 1: "I-DRUG"}) == []


def test_asking_the_wrong_task_names_the_right_endpoint(classifier, tagger):
    with pytest.raises(WrongTaskError, match="/classify"):
        classifier.entities(["x"])
    with pytest.raises(WrongTaskError, match="/entities"):
        tagger.classify(["x"])


def test_explicit_variant_and_threads(classifier_bundle, monkeypatch):
    monkeypatch.setenv("DAPT_ORT_THREADS", "1")
    predictor = OnnxPredictor(classifier_bundle, variant="fp32", providers=["CPUExecutionProvider"])
    assert predictor.info()["variant"] == "fp32"
    assert predictor._options.intra_op_num_threads == 1
    with pytest.raises(BundleError, match="fp16"):
        OnnxPredictor(classifier_bundle, variant="fp16")


def test_not_a_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="serving.json"):
        OnnxPredictor(tmp_path)


def test_manifest_checksums_are_verified_at_load(classifier_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, bundle)
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    manifest = {"files": {p.relative_to(bundle).as_posix(): {"sha256": sha256_of(p)} for p in files}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    OnnxPredictor(bundle).warmup()  # intact: loads

    onnx_file = bundle / "onnx" / "int8" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ChecksumError, match="onnx/int8/model.onnx"):
        OnnxPredictor(bundle)


def test_self_check_passes_on_a_good_bundle_and_catches_a_mismatched_tokenizer(classifier, tagger, tmp_path):
    classifier.self_check()
    tagger.self_check()

    class NaNSession:  # a graph that loads but answers garbage: what checksums cannot see
        def __init__(self, real):
            self.real = real

        def run(self, names, feeds):
            return [np.full_like(self.real.run(names, feeds)[0], np.nan)]

    broken = OnnxPredictor.__new__(OnnxPredictor)
    broken.__dict__.update(classifier.__dict__)
    broken.session = NaNSession(classifier.session)
    with pytest.raises(BundleError, match="non-finite"):
        broken.self_check()


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60))
def test_entity_offsets_point_into_any_unicode_text(tagger, text):
    """Emoji, combining marks, RTL marks, NUL, CJK: every span is text[start:end] of the text sent."""
    (spans,) = tagger.entities([text])
    for span in spans:
        assert 0 <= span["start"] < span["end"] <= len(text)
        assert text[span["start"] : span["end"]] == span["text"]
