"""Shadow traffic in-process (services/shadow.py): agreement, span F1, the bounded queue, errors, evidence."""

from __future__ import annotations

import time

import pytest

from services.hooks import Observation
from services.reloader import ModelSlot, load_model
from services.shadow import Shadow, ShadowStats
from tests.services.helpers import MINIMAL_EVIDENCE, tmp_registry

TEXTS = ["Aspirin eased the headache.", "No adverse events were reported", "fine", "the drug failed"]


def _observation(served, texts=TEXTS) -> Observation:
    encodings = served.predictor.encode(list(texts))
    answers = served.predictor.classify_encoded(encodings)
    return Observation(served, served.task, list(texts), encodings, answers, 0.01)


def test_a_version_shadowing_itself_agrees_fully_and_another_by_its_label_share(
    classifier_bundle, positive_bundle
):
    production = load_model(classifier_bundle, "tiny", "1")
    itself = Shadow(ModelSlot(load_model(classifier_bundle, "tiny", "1")), record_evidence=False)
    itself.answer(_observation(production))
    status = itself.status()
    assert (status["requests"], status["texts"], status["agreement"], status["errors"]) == (1, 4, 1.0, 0)
    assert status["metric"] == "label_agreement" and status["p50_ms"] > 0 and status["against"] == ["1"]

    other = Shadow(ModelSlot(load_model(positive_bundle, "tiny", "2")), record_evidence=False)
    observation = _observation(production)
    other.answer(observation)
    positive_share = sum(p["label"] == "positive" for p in observation.predictions) / len(TEXTS)
    assert other.status()["agreement"] == pytest.approx(
        positive_share
    )  # the other version always says positive


def test_entity_span_f1_counts_matching_spans_and_two_empty_answers_agree():
    stats = ShadowStats(version="2", task="ner")
    assert stats.agreement is None  # nothing compared yet
    production = [[{"start": 0, "end": 7, "label": "DRUG"}, {"start": 12, "end": 20, "label": "DISEASE"}], []]
    shadow = [[{"start": 0, "end": 7, "label": "DRUG"}, {"start": 12, "end": 20, "label": "DRUG"}], []]
    stats.compare(production, shadow)
    assert (stats.tp, stats.fp, stats.fn) == (1, 1, 1)
    assert stats.agreement == pytest.approx(0.5)  # 2*1 / (2*1 + 1 + 1)
    empty = ShadowStats(version="2", task="ner")
    empty.compare([[]], [[]])
    assert empty.agreement == 1.0


def test_a_full_queue_drops_and_counts_copies_without_blocking(classifier_bundle):
    served = load_model(classifier_bundle, "tiny", "1")
    shadow = Shadow(ModelSlot(served), queue_size=2, record_evidence=False)  # not started: nothing drains it
    observation = _observation(served)
    started = time.perf_counter()
    for _ in range(5):
        shadow.observe(observation)
    assert time.perf_counter() - started < 1.0
    status = shadow.status()
    assert status["dropped"] == 3 and status["queue"] == {"size": 2, "waiting": 2}
    assert status["requests"] == 0


def test_a_shadow_that_fails_counts_an_error_and_the_caller_never_sees_it(classifier_bundle, ner_bundle):
    production = load_model(classifier_bundle, "tiny", "1")
    broken = Shadow(ModelSlot(load_model(ner_bundle, "tiny", "2")), record_evidence=False)  # cannot classify
    broken.start()
    try:
        broken.observe(_observation(production))
        deadline = time.monotonic() + 30
        while broken.status()["errors"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        broken.stop()
    status = broken.status()
    assert status["errors"] == 1 and status["requests"] == 0 and status["agreement"] is None


def test_the_summary_is_stored_as_evidence_and_a_restarted_shadow_adds_to_it(
    tmp_path, classifier_bundle, positive_bundle
):
    from models.registry.store import RegistryError

    registry = tmp_registry(tmp_path)
    registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    registry.register("tiny", positive_bundle, MINIMAL_EVIDENCE)
    production = load_model(classifier_bundle, "tiny", "1")
    shadow = Shadow(ModelSlot(load_model(positive_bundle, "tiny", "2")), registry=registry)
    for _ in range(3):
        shadow.answer(_observation(production))
    shadow.stop()  # writes the summary
    stored = registry.get_version("tiny", 2).evidence["shadow"]
    assert stored["version"] == "2" and stored["requests"] == 3 and stored["texts"] == 12
    assert stored["against"] == ["1"] and stored["metric"] == "label_agreement"
    assert registry.get_version("tiny", 2).evidence["metrics"] == MINIMAL_EVIDENCE["metrics"]  # kept

    again = Shadow(ModelSlot(load_model(positive_bundle, "tiny", "2")), registry=registry)
    again.answer(_observation(production))
    assert again.status()["requests"] == 4 and again.status()["agreement"] == stored["agreement"]

    with pytest.raises(RegistryError, match="written at registration"):
        registry.attach_evidence("tiny", 2, "metrics", {"macro_f1": 1.0})
