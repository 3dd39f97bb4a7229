"""services/batcher.py in-process, on a real tiny ONNX model: grouping by length, queue bound, answers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.batcher import MicroBatcher, QueueFull
from services.predictor import OnnxPredictor


@pytest.fixture(scope="module")
def predictor(classifier_bundle):
    return OnnxPredictor(classifier_bundle, variant="fp32")


def _batcher(predictor, seen: list[list[int]], **settings) -> MicroBatcher:
    def run(model, payloads):
        seen.append([len(encoding.ids) for _, encoding in payloads])
        return model.classify_encoded([encoding for _, encoding in payloads])

    defaults = {"max_batch_size": 32, "max_batch_tokens": 4096, "max_wait_ms": 2.0, "max_queue_texts": 512}
    return MicroBatcher(run, length=lambda payload: len(payload[1].ids), **{**defaults, **settings})


def _payloads(predictor, texts):
    return list(zip(texts, predictor.encode(texts), strict=True))


def test_texts_of_similar_length_share_a_batch_and_answers_match_one_by_one(predictor):
    """Short and long texts arriving together: the token budget keeps the long ones out of the short batch
    (no padding of 16 short texts to 24 tokens), and every answer equals the text's answer alone."""
    short = [f"drug {i}" for i in range(16)]
    long = [" ".join(["headache"] * 30) + f" {i}" for i in range(4)]  # truncated to 24 tokens
    seen: list[list[int]] = []
    batcher = _batcher(predictor, seen, max_batch_tokens=100, max_wait_ms=200)

    async def main():
        # One request of mixed texts, then single-text requests: all wait together for the first batch.
        mixed = batcher.submit(predictor, _payloads(predictor, [short[0], long[0]]))
        rest = [batcher.submit(predictor, _payloads(predictor, [text])) for text in short[1:] + long[1:]]
        return await asyncio.gather(mixed, *rest)

    answers = asyncio.run(main())
    batcher.close()
    assert sorted(map(sorted, seen)) == sorted([[4] * 16, [24] * 4]), seen  # two batches, by length
    alone = predictor.classify([short[0], long[0], *short[1:], *long[1:]])
    flat = [answer for request in answers for answer in request]
    assert [a["label"] for a in flat] == [a["label"] for a in alone]
    assert np.allclose([a["score"] for a in flat], [a["score"] for a in alone], atol=1e-5)
    assert [a["truncated"] for a in flat] == [False, True] + [False] * 15 + [True] * 3


def test_a_full_queue_refuses_with_a_retry_hint_and_recovers(predictor):
    seen: list[list[int]] = []
    batcher = _batcher(predictor, seen, max_queue_texts=8, max_wait_ms=100)

    async def main():
        first = asyncio.ensure_future(batcher.submit(predictor, _payloads(predictor, ["a"] * 6)))
        await asyncio.sleep(0)  # queued, waiting for company
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(predictor, _payloads(predictor, ["b"] * 3))
        assert refused.value.retry_after_s >= 1 and "busy" in str(refused.value)
        assert len(await first) == 6
        return await batcher.submit(predictor, _payloads(predictor, ["c"] * 8))  # room again

    assert len(asyncio.run(main())) == 8
    batcher.close()


def test_a_cancelled_request_is_dropped_and_the_worker_goes_on(predictor):
    seen: list[list[int]] = []
    batcher = _batcher(predictor, seen, max_wait_ms=50)

    async def main():
        gone = asyncio.ensure_future(batcher.submit(predictor, _payloads(predictor, ["gone"] * 5)))
        await asyncio.sleep(0)
        gone.cancel()
        return await batcher.submit(predictor, _payloads(predictor, ["kept"]))

    assert len(asyncio.run(main())) == 1
    batcher.close()
    assert [len(batch) for batch in seen] == [1]  # the cancelled texts never ran


def test_a_lone_client_never_waits_and_concurrent_traffic_waits_for_company(predictor):
    """A text arriving while traffic is single (the last batch held one text) runs at once even with a long
    wait bound; texts arriving while a batch runs fill the next batch; once a batch held several texts, an
    under-full batch waits (at most the bound) for the texts that follow it."""
    import time

    seen: list[list[str]] = []

    def slow_run(model, payloads):
        seen.append([text for text, _ in payloads])
        time.sleep(0.3)  # a long ONNX call, so later texts arrive while it runs
        return model.classify_encoded([encoding for _, encoding in payloads])

    batcher = MicroBatcher(
        slow_run,
        length=lambda p: len(p[1].ids),
        max_batch_size=32,
        max_batch_tokens=4096,
        max_wait_ms=1000,  # long, so a wait would show
        max_queue_texts=512,
    )

    async def main():
        sent = time.monotonic()
        await batcher.submit(predictor, _payloads(predictor, ["lone"]))
        lone_s = time.monotonic() - sent
        first = asyncio.ensure_future(batcher.submit(predictor, _payloads(predictor, ["first"])))
        await asyncio.sleep(0.05)  # its batch is running
        during = [batcher.submit(predictor, _payloads(predictor, [f"during {i}"])) for i in range(10)]
        await asyncio.gather(first, *during)
        early = asyncio.ensure_future(batcher.submit(predictor, _payloads(predictor, ["after a full batch"])))
        await asyncio.sleep(0.1)  # within the wait: it is still waiting for company
        late = batcher.submit(predictor, _payloads(predictor, ["joins it"]))
        await asyncio.gather(early, late)
        return lone_s

    lone_s = asyncio.run(main())
    batcher.close()
    assert lone_s < 0.9  # 0.3 s of inference, not held for the 1 s bound
    assert [len(batch) for batch in seen] == [1, 1, 10, 2]
    assert seen[3] == ["after a full batch", "joins it"]


@pytest.mark.parametrize("value", ["-1", "5000", "soon"])
def test_a_batch_wait_outside_0_to_1000_ms_is_refused_naming_the_unit(value, monkeypatch):
    from services.answering import wait_ms_env

    monkeypatch.setenv("DAPT_BATCH_WAIT_MS", value)
    with pytest.raises(
        RuntimeError, match="DAPT_BATCH_WAIT_MS must be a wait in milliseconds from 0 to 1000"
    ):
        wait_ms_env()
