"""Helpers shared by the benchmarks: load generation, percentiles, FLOP counting, matmul FLOP/s, plots.

Only the standard library is imported at module level; numpy, aiohttp, tokenizers and matplotlib are imported
inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_STARTED = time.perf_counter()


class BenchmarkError(RuntimeError):
    """The benchmark cannot run as asked; the message says what is wrong and how to fix it."""


def say(message: str) -> None:
    """Progress goes to stderr so stdout stays one JSON document."""
    print(f"[bench {time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    return {
        "cpus": cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def log_tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.is_file() else "(no log)"


# --------------------------------------------------------------------------- texts


def texts_of_exact_tokens(tokenizer_json: Path, sentences: list[str], tokens: int, count: int) -> list[str]:
    """``count`` distinct texts that each encode to exactly ``tokens`` tokens (special tokens included).

    Texts are sample sentences joined (starting at a different sentence each time) and cut at a word boundary;
    the last word is dropped or a short filler word added until the count is exact, checked by the tokenizer
    the service uses.
    """
    from tokenizers import Tokenizer

    if not sentences:
        raise BenchmarkError("no sample sentences to build request texts from")
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def length(words: list[str]) -> int:
        return len(tokenizer.encode(" ".join(words)).ids)

    texts: list[str] = []
    for start in range(count):
        words: list[str] = []
        index = start
        while length(words) < tokens:
            words.extend(sentences[index % len(sentences)].split())
            index += 1
        while words and length(words) > tokens:
            words.pop()
        while length(words) < tokens:  # one word too many was removed: pad with one-token words
            words.append("the")
        if length(words) != tokens:
            raise BenchmarkError(
                f"could not build a text of exactly {tokens} tokens from the sample sentences"
            )
        texts.append(" ".join(words))
    return texts


# --------------------------------------------------------------------------- FLOPs


def encoder_flops_per_sequence(config: dict[str, Any], tokens: int, num_labels: int) -> dict[str, float]:
    """Forward FLOPs of a BERT sequence classifier on one sequence of ``tokens`` tokens (multiply-add = 2).

    Per layer: Q, K, V and output projections 4·H² and the feed-forward 2·H·I weights, each used once per
    token (2 FLOPs per weight per token), plus attention scores QKᵀ and the weighted sum AV, 2·T²·H each.
    Then the pooler (H², first token only) and the classifier (H·labels). Embedding lookups, layer norms,
    softmax and GELU are not matmuls and are left out (a few percent at this size).
    """
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    intermediate = int(config["intermediate_size"])
    layer_weights = 4 * hidden * hidden + 2 * hidden * intermediate
    dense = 2 * layer_weights * tokens * layers
    attention = 4 * tokens * tokens * hidden * layers
    head = 2 * (hidden * hidden + hidden * num_labels)
    return {
        "non_embedding_params": float(layers * layer_weights + hidden * hidden + hidden * num_labels),
        "dense_flops": float(dense),
        "attention_flops": float(attention),
        "head_flops": float(head),
        "total_flops": float(dense + attention + head),
    }


def matmul_flops_per_s(threads: int, seconds: float = 1.5, size: int = 1024) -> float:
    """Sustained float32 FLOP/s of numpy square matmuls in this process, BLAS limited to ``threads``."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        for _ in range(3):
            a @ b
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            runs += 1
        elapsed = time.perf_counter() - started
    return 2.0 * size**3 * runs / elapsed


# --------------------------------------------------------------------------- load


def latency_summary(latencies_ms: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "mean_ms": round(float(values.mean()), 2),
        "max_ms": round(float(values.max()), 2),
    }


def texts_body(text: str) -> dict[str, Any]:
    """Our service's request body (and the naive server's): ``{"texts": [text]}``."""
    return {"texts": [text]}


# The load generator shares the machine's cores with the servers it measures, so it must be light: httpx's
# AsyncClient spent 1.6-1.9 ms of CPU per request here against aiohttp's 0.33 (benchmarks/README, session 8).
async def _drive(
    url: str,
    texts: list[str],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float,
    endpoint: str = "/classify",
    body: Callable[[str], dict[str, Any]] = texts_body,
    answer_key: str = "predictions",
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + max_seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                text = texts[issued % len(texts)]
                issued += 1
                sent = time.perf_counter()
                try:
                    async with session.post(f"{url}{endpoint}", json=body(text)) as response:
                        answer = await response.json(content_type=None)
                    ok = response.status == 200 and len(answer.get(answer_key, [])) == 1
                    reason = "" if ok else f"http {response.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    ok, reason = False, type(exc).__name__
                if ok:
                    latencies.append((time.perf_counter() - sent) * 1000.0)
                else:
                    errors[reason] = errors.get(reason, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies_ms": latencies, "errors": errors, "seconds": elapsed}


def drive_load(
    url: str,
    texts: list[str],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float = 60.0,
    endpoint: str = "/classify",
    body: Callable[[str], dict[str, Any]] = texts_body,
    answer_key: str = "predictions",
) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` clients (one aiohttp session), each sending one text per POST
    ``endpoint`` (body built by ``body``; an answer counts when it is 200 with one item under ``answer_key``)
    and waiting for the answer before the next, until ``max_requests`` were sent or ``max_seconds`` passed.

    Returns throughput (successful requests per second of wall time), latency percentiles, error counts, the
    CPU the load generator itself used per request (its share of the cores the servers also use) and the raw
    latencies (``latencies_ms``, for plots).
    """
    cpu_before = time.process_time()
    run = asyncio.run(
        _drive(url, texts, concurrency, max_requests, max_seconds, timeout_s, endpoint, body, answer_key)
    )
    client_cpu_s = time.process_time() - cpu_before
    done = len(run["latencies_ms"])
    sent = done + sum(run["errors"].values())
    return {
        "concurrency": concurrency,
        "requests": done,
        "errors": sum(run["errors"].values()),
        "error_kinds": run["errors"],
        "seconds": round(run["seconds"], 3),
        "throughput_rps": round(done / run["seconds"], 2) if run["seconds"] > 0 else 0.0,
        **latency_summary(run["latencies_ms"]),
        "client_cpu_ms_per_request": round(client_cpu_s * 1000.0 / sent, 3) if sent else None,
        "latencies_ms": run["latencies_ms"],
    }


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection from the standard library, for one request at a time: the c=1 and
    burst-recovery measurements time the server, and http.client spends ~0.5 ms of CPU per request here
    against httpx.Client's ~1.2 (benchmarks/README, session 8)."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)

    def post_json(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        """(status, decoded JSON answer or None when the body is not JSON)."""
        import http.client
        import json

        body = json.dumps(payload).encode("utf-8")
        for attempt in (1, 2):
            try:
                self._connection.request(
                    "POST", path, body=body, headers={"Content-Type": "application/json"}
                )
                response = self._connection.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._connection.close()  # the server closed the kept-alive connection: reconnect once
                if attempt == 2:
                    raise
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, None

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- plots


def latency_plot(path: Path, levels: dict[str, dict[int, dict[str, Any]]], histogram_level: int) -> Path:
    """Left: latency histograms of every server at ``histogram_level`` concurrency (log x);
    right: p50 and p99 against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    everything = [
        v for runs in levels.values() for v in runs.get(histogram_level, {}).get("latencies_ms", [])
    ]
    if everything:
        low, high = max(min(everything), 0.1), max(everything)
        bins = np.geomspace(low, high * 1.01, 50)
        for index, (server, runs) in enumerate(levels.items()):
            values = runs.get(histogram_level, {}).get("latencies_ms", [])
            if values:
                p99 = np.percentile(values, 99)
                label = f"{server} (p99 {p99:.0f} ms)"
                left.hist(values, bins=bins, alpha=0.55, color=f"C{index}", label=label)
        left.set_xscale("log")
        left.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("request latency (ms, log scale)")
    left.set_ylabel("requests")
    left.set_title(f"latency at concurrency {histogram_level}")
    left.legend()
    for index, (server, runs) in enumerate(levels.items()):
        xs = sorted(runs)
        p50 = [runs[c]["p50_ms"] if runs[c]["p50_ms"] is not None else np.nan for c in xs]
        p99 = [runs[c]["p99_ms"] if runs[c]["p99_ms"] is not None else np.nan for c in xs]
        right.plot(xs, p50, marker="o", color=f"C{index}", label=f"{server} p50")
        right.plot(xs, p99, marker="^", linestyle="--", color=f"C{index}", label=f"{server} p99")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xticks(sorted({c for runs in levels.values() for c in runs}))
    right.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    right.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    right.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("concurrent clients")
    right.set_ylabel("latency (ms)")
    right.set_title("latency vs concurrency")
    right.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
