"""One hop from a public request to a model batch: a micro-batcher inside the service process.

    batcher = MicroBatcher(run_batch, max_batch_size=32, max_batch_tokens=4096, max_wait_ms=2, max_queue_texts=512)
    answers = await batcher.submit(model, [(text, encoding), ...])   # one answer per text, in order

A request's texts, already tokenized, join a queue one item per text. A single worker task on the event loop
takes the oldest waiting text and the waiting texts closest to it in token length, up to ``max_batch_size``
texts and ``max_batch_tokens`` padded tokens (longest text x texts), and runs the batch in one inference
thread; each text's future is resolved with its answer. While a batch runs the next one gathers, so under load
batches fill by themselves. While traffic is concurrent (the last batch held more than one text) an under-full
batch waits at most ``max_wait_ms`` (counted from its oldest text's arrival) for company; a lone client's text
runs at once, since nothing could join it. The wait is a fixed bound, not learned: after a burst the first
single request waits at most once, and the ones after it not at all.

The queue holds at most ``max_queue_texts`` texts: a request that would go over is refused with
:class:`QueueFull` (the service answers 503 with ``Retry-After``) instead of waiting behind a backlog. A
request whose client went away is cancelled; its texts are dropped when the worker reaches them.

Texts are batched only with texts encoded by the same model: a request tokenized by one model version is
answered by that version, also when a reload swaps the model while it waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(RuntimeError):
    """The queue has no room for this request's texts; retry after ``retry_after_s``."""

    def __init__(self, queued: int, adding: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the server is busy: {queued} texts are waiting and this request adds {adding} (at most {limit} "
            f"may wait); retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Item:
    model: Any
    payload: Any
    length: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """See the module docstring. ``run_batch(model, payloads)`` runs in the inference thread and returns one
    answer per payload; ``length(payload)`` is its token count (what padding costs)."""

    def __init__(
        self,
        run_batch: Callable[[Any, list[Any]], list[Any]],
        *,
        length: Callable[[Any], int],
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue_texts: int,
    ) -> None:
        self._run_batch = run_batch
        self._length = length
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_texts = max_queue_texts
        # One batch at a time: ONNX Runtime already uses every core for one run.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dapt-inference")
        self._pending: list[_Item] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self._last_batch_size = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    def settings(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_wait_ms": self.max_wait_s * 1000.0,
            "max_queue_texts": self.max_queue_texts,
        }

    async def submit(self, model: Any, payloads: list[Any]) -> list[Any]:
        """Answers for ``payloads`` (in order), each computed in some batch of ``model``; raises QueueFull."""
        self._bind()
        if self._pending and len(self._pending) + len(payloads) > self.max_queue_texts:
            raise QueueFull(len(self._pending), len(payloads), self.max_queue_texts, self._retry_after())
        loop = asyncio.get_running_loop()
        items = [_Item(model, payload, self._length(payload), loop.create_future()) for payload in payloads]
        self._pending.extend(items)
        assert self._arrived is not None  # _bind() created it
        self._arrived.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    def _retry_after(self) -> int:
        return 1

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the worker

    def _bind(self) -> None:
        """Start the worker on the running loop (again when a new loop runs the service, as in tests)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._worker is not None and not self._worker.done():
            return
        self._loop = loop
        self._pending = [item for item in self._pending if item.future.get_loop() is loop]
        self._arrived = asyncio.Event()
        self._worker = loop.create_task(self._work(), name="dapt-batcher")

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        arrived = self._arrived
        assert arrived is not None  # _bind() created it before starting this worker
        while True:
            self._pending = [item for item in self._pending if not item.future.done()]  # cancelled requests
            if not self._pending:
                arrived.clear()
                await arrived.wait()
                continue
            # Wait for company only while traffic is concurrent (the last batch held several texts): a lone
            # client never waits, and the first lone request after a burst waits at most once.
            if len(self._pending) < self.max_batch_size and self.max_wait_s > 0 and self._last_batch_size > 1:
                remaining = self._pending[0].arrived + self.max_wait_s - time.monotonic()
                if remaining > 0:
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                    continue
            batch = self._take()
            self.batches += 1
            self._last_batch_size = len(batch)
            try:
                answers = await loop.run_in_executor(
                    self._executor, self._run_batch, batch[0].model, [item.payload for item in batch]
                )
            except Exception as exc:  # the batch's requests fail; the worker goes on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, answer in zip(batch, answers, strict=True):
                if not item.future.done():
                    item.future.set_result(answer)

    def _take(self) -> list[_Item]:
        """The oldest text plus the waiting texts of the same model closest to it in length, within the
        batch size and token budget (a text longer than the budget goes alone)."""
        anchor, rest = self._pending[0], self._pending[1:]
        candidates = sorted(
            (item for item in rest if item.model is anchor.model),
            key=lambda item: abs(item.length - anchor.length),
        )
        chosen = [anchor]
        longest = anchor.length
        for item in candidates:
            if len(chosen) >= self.max_batch_size:
                break
            widest = max(longest, item.length)
            if widest * (len(chosen) + 1) > self.max_batch_tokens:
                continue
            chosen.append(item)
            longest = widest
        taken = set(map(id, chosen))
        self._pending = [item for item in self._pending if id(item) not in taken]
        return chosen
