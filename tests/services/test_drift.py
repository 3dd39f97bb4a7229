"""Live drift and the prediction log, in process: counting as the profile counts, rotation, sampling, privacy
mode, the observer never blocking, recipe thresholds. The live server test is tests/services/test_live_drift.py."""

from __future__ import annotations

import csv
import hashlib
import random
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE

SHIFTED = "zqxv " * 30 + "qwrtpk vbnmzz xcvbnq"  # long, and words the vocabulary splits into pieces


def sample_texts(n: int = 300) -> tuple[list[str], list[str]]:
    with open(SAMPLE / "sentiment.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:n]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def test_live_texts_are_counted_as_the_training_profile_counts_them(classifier_bundle):
    """Token, word and OOV counts from the serving encodings equal expectations' TokenCounter's."""
    import pandas as pd
    from tokenizers import Tokenizer

    from expectations.derived import TokenCounter
    from services.drift import encoding_stats

    texts, _ = sample_texts(200)
    texts += [SHIFTED[:60], "Café naïve — 😀 中文 text"]
    tokenizer_file = classifier_bundle / "tokenizer" / "tokenizer.json"
    counted = TokenCounter(tokenizer_file).count(pd.Series(texts))
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    unk = tokenizer.token_to_id("[UNK]")
    live = [encoding_stats(e, unk) for e in tokenizer.encode_batch(texts)]
    assert [s[0] for s in live] == list(counted.tokens)
    assert [s[1] for s in live] == list(counted.words)
    assert [s[2] for s in live] == list(counted.oov_words)
    assert sum(s[2] for s in live) > 0  # the shifted text has OOV words, so the comparison means something


def _records(log, texts: list[str], task: str = "classification"):
    stats = [(len(t.split()), len(t.split()), 0) for t in texts]
    if task == "ner":
        answers = [
            ([{"text": t.split()[0], "label": "DRUG", "start": 0, "end": 3, "score": 0.9}], False)
            for t in texts
        ]
    else:
        answers = [{"label": "positive", "score": 0.9, "scores": {}, "truncated": False} for _ in texts]
    return log.records(
        name="tiny", version="1", task=task, texts=texts, stats=stats, answers=answers, latency_ms=3.2
    )


def test_prediction_log_rotates_by_size_and_keeps_at_most_the_configured_files(tmp_path):
    from models.monitoring import log_files, read_prediction_log
    from services.prediction_log import PredictionLog

    log = PredictionLog(tmp_path, mode="hash", max_bytes=4096, max_files=3)
    for index in range(200):
        log.write("tiny", _records(log, [f"text number {index} about aspirin"]))
    log.close()
    files = log_files(tmp_path, "tiny")
    assert len(files) == 3 and files[-1].name == "predictions.jsonl"
    assert log.rotations > 3  # it rotated many times and deleted the oldest
    assert all(path.stat().st_size <= 4096 for path in files)
    records = read_prediction_log(tmp_path, "tiny")
    numbers = [
        int(r["text_sha256"] == hashlib.sha256(f"text number {i} about aspirin".encode()).hexdigest())
        for i, r in zip(range(200 - len(records), 200), records, strict=True)
    ]
    assert sum(numbers) == len(records)  # the newest records survive, in order, whole lines only
    assert 0 < len(records) < 200


def test_prediction_log_sampling_keeps_about_the_configured_share(tmp_path):
    from services.prediction_log import PredictionLog

    log = PredictionLog(tmp_path, mode="hash", sample=0.25, rng=random.Random(7))
    kept = sum(len(_records(log, [f"t{i}" for i in range(100)])) for _ in range(40))
    assert 850 <= kept <= 1150  # 4000 texts at 25 %: 1000 expected, sd ~27


def test_hash_mode_stores_no_text_and_text_mode_stores_it(tmp_path):
    from models.monitoring import read_prediction_log
    from services.prediction_log import PredictionLog

    secret = "Patient Jane Roe reacted to warfarin"
    hashed = PredictionLog(tmp_path / "hash", mode="hash")
    hashed.write("tiny", _records(hashed, [secret]) + _records(hashed, [secret], task="ner"))
    hashed.close()
    content = (tmp_path / "hash" / "tiny" / "predictions.jsonl").read_text()
    assert "Jane" not in content and "warfarin" not in content and "Patient" not in content
    cls_record, ner_record = read_prediction_log(tmp_path / "hash", "tiny")
    assert cls_record["text_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert (cls_record["label"], cls_record["score"], cls_record["latency_ms"]) == ("positive", 0.9, 3.2)
    assert ner_record["entities"] == [{"label": "DRUG", "start": 0, "end": 3, "score": 0.9}]

    plain = PredictionLog(tmp_path / "text", mode="text")
    plain.write("tiny", _records(plain, [secret], task="ner"))
    plain.close()
    (record,) = read_prediction_log(tmp_path / "text", "tiny")
    assert record["text"] == secret and record["entities"][0]["text"] == "Patient"


def test_prediction_log_settings_are_checked(monkeypatch, tmp_path):
    from services.prediction_log import PredictionLog

    monkeypatch.delenv("DAPT_PREDICTION_LOG", raising=False)
    assert PredictionLog.from_environment() is None  # opt-in
    monkeypatch.setenv("DAPT_PREDICTION_LOG", "everything")
    with pytest.raises(RuntimeError, match="DAPT_PREDICTION_LOG='everything'.*off, hash"):
        PredictionLog.from_environment()
    monkeypatch.setenv("DAPT_PREDICTION_LOG", "hash")
    monkeypatch.setenv("DAPT_PREDICTION_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("DAPT_PREDICTION_LOG_SAMPLE", "1.5")
    with pytest.raises(RuntimeError, match="DAPT_PREDICTION_LOG_SAMPLE must be a share"):
        PredictionLog.from_environment()
    monkeypatch.setenv("DAPT_PREDICTION_LOG_SAMPLE", "0.5")
    monkeypatch.setenv("DAPT_PREDICTION_LOG_FILES", "2")
    log = PredictionLog.from_environment()
    assert log is not None and (log.mode, log.sample, log.max_files, log.root) == ("hash", 0.5, 2, tmp_path)


def _served(bundle: Path, name: str = "tiny", version: str = "1"):
    from services.reloader import load_model

    return load_model(bundle, name, version)


def test_observer_never_blocks_the_answer_and_counts_what_it_drops(classifier_bundle, tmp_path):
    """With the observer thread stuck, submits return at once and the overflow is dropped and counted."""
    from services.drift import Observer
    from services.hooks import Observation
    from services.prediction_log import PredictionLog

    served = _served(classifier_bundle)
    texts = ["Aspirin eased the headache."]
    encodings = served.predictor.encode(texts)
    answers = served.predictor.classify_encoded(encodings)
    observer = Observer(log=PredictionLog(tmp_path, mode="hash"), queue_items=2)
    try:
        with observer._monitors_lock:  # the thread blocks on its first item
            slowest = 0.0
            for _ in range(50):
                started = time.perf_counter()
                observer.observe(Observation(served, served.task, texts, encodings, answers, 0.001))
                slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.2)
        assert observer.wait_idle(10)
        assert observer.dropped["queue_full"] >= 47  # one in the thread, at most two queued
        assert observer.log is not None and observer.log.written == 50 - observer.dropped["queue_full"]
        assert slowest < 0.5  # a put_nowait, not a wait for the stuck thread
    finally:
        observer.close()


def test_a_log_that_cannot_be_written_is_counted_not_raised(classifier_bundle, tmp_path):
    from services.drift import Observer
    from services.hooks import Observation
    from services.prediction_log import PredictionLog

    served = _served(classifier_bundle)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    observer = Observer(log=PredictionLog(blocker, mode="hash"))
    try:
        encodings = served.predictor.encode(["one", "two"])
        answers = served.predictor.classify_encoded(encodings)
        observer.observe(Observation(served, served.task, ["one", "two"], encodings, answers, 0.001))
        assert observer.wait_idle(10)
        assert observer.dropped == {"write_error": 2}
    finally:
        observer.close()


def test_drift_window_measures_a_shift_and_judges_it_by_the_recipe_thresholds(classifier_bundle):
    from expectations.drift import profile_data
    from models.recipe import MonitorConfig
    from services.drift import DriftMonitor, encoding_stats

    served = _served(classifier_bundle)
    texts, labels = sample_texts(300)
    tokenizer_file = classifier_bundle / "tokenizer" / "tokenizer.json"
    reference = profile_data(texts, labels, tokenizer_file)
    config = MonitorConfig(window=100, min_texts=50)
    monitor = DriftMonitor("tiny", "1", reference, config)
    unk = served.predictor.tokenizer.token_to_id("[UNK]")

    def feed(batch: list[str], predicted: list[str]) -> dict:
        stats = [encoding_stats(e, unk) for e in served.predictor.encode(batch)]
        return monitor.observe(stats, [[p] for p in predicted])

    assert monitor.document()["status"] == "waiting"
    report = feed(texts[:40], labels[:40])
    assert report["status"] == "waiting"  # 40 < min_texts
    report = feed(texts[40:140], labels[40:140])
    assert report["status"] == "ok", report
    assert all(s["value"] < s["warn"] for s in report["statistics"].values())
    report = feed([SHIFTED] * 100, ["negative"] * 100)  # the window is now all shifted
    assert report["status"] == "fail"
    judged = report["statistics"]
    assert judged["length"]["status"] == judged["oov_rate"]["status"] == judged["labels"]["status"] == "fail"
    assert judged["length"]["fail"] == 0.3 and judged["oov_rate"]["warn"] == 0.05


def test_monitor_recipe_section_is_validated_with_clear_errors():
    from models.recipe import RecipeError, recipe_from_dict

    data = {"corpus": "c.txt", "train": "t.csv", "labels": ["a", "b"]}
    recipe = recipe_from_dict(
        {"name": "m", "data": data, "monitor": {"window": 500, "labels": {"warn": 0.2, "fail": 0.4}}}
    )
    assert (
        recipe.monitor.window == 500
        and recipe.monitor.labels.fail == 0.4
        and recipe.monitor.length.fail == 0.3
    )
    with pytest.raises(RecipeError, match=r"monitor\.oov_rate: .*fail \(0\.01\) must be >= warn \(0\.05\)"):
        recipe_from_dict({"name": "m", "data": data, "monitor": {"oov_rate": {"warn": 0.05, "fail": 0.01}}})
    with pytest.raises(RecipeError, match=r"monitor: .*min_texts \(50\) must be <= window \(20\)"):
        recipe_from_dict({"name": "m", "data": data, "monitor": {"window": 20, "min_texts": 50}})
    with pytest.raises(RecipeError, match=r"monitor\.retrain_on"):
        recipe_from_dict({"name": "m", "data": data, "monitor": {"retrain_on": "sometimes"}})
    with pytest.raises(RecipeError, match=r"monitor\.lenght: unknown field"):
        recipe_from_dict({"name": "m", "data": data, "monitor": {"lenght": {"warn": 0.1, "fail": 0.2}}})


def test_a_version_without_a_profile_says_so(classifier_bundle):
    from services.drift import Observer

    served = _served(classifier_bundle)  # a bare export: no evidence.json
    observer = Observer()
    try:
        assert observer.drift_document(served)["status"] == "no profile"
    finally:
        observer.close()


def test_the_observer_judges_a_window_once_per_drained_batch_not_once_per_request(
    classifier_bundle, monkeypatch
):
    """Judging a window is a pass over all of it: requests that queued up while the observer was busy are all
    added first and the window judged once, and wait_idle() returns only after that judgement counts them."""
    import services.drift as drift
    from expectations.drift import profile_data
    from models.recipe import MonitorConfig
    from services.hooks import Observation

    served = _served(classifier_bundle)
    texts, labels = sample_texts(100)
    reference = profile_data(texts, labels, classifier_bundle / "tokenizer" / "tokenizer.json")
    judged = []
    real_statistics = drift.drift_statistics
    monkeypatch.setattr(
        drift, "drift_statistics", lambda *a, **k: judged.append(1) or real_statistics(*a, **k)
    )
    observer = drift.Observer()
    observer._monitors[(served.name, served.version)] = drift.DriftMonitor(
        served.name, served.version, reference, MonitorConfig(window=100, min_texts=10)
    )
    encodings = served.predictor.encode(texts[:1])
    answers = served.predictor.classify_encoded(encodings)
    try:
        with observer._monitors_lock:  # the observer is stuck on its first request while 20 more queue up
            for _ in range(20):
                observer.observe(Observation(served, served.task, texts[:1], encodings, answers, 0.001))
            time.sleep(0.2)
        assert observer.wait_idle(10)
        assert 1 <= len(judged) <= 3, f"the window was judged {len(judged)} times for 20 requests"
        document = observer.drift_document(served)
        assert document["texts"] == 20 and document["status"] != "waiting"
    finally:
        observer.close()
