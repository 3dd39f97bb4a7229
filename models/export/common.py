"""Pieces both ONNX exports use (the task model in ``onnx.py``, the embedding model in ``embedding.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


class ExportError(RuntimeError):
    """The checkpoint cannot be exported; the message says what is wrong and how to fix it."""


def _optimize(plain: Path, output: Path, level: Literal["O2", "O4"]) -> Path:
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    optimization = AutoOptimizationConfig.with_optimization_level(level, for_gpu=level == "O4")
    with _quiet_onnxruntime():
        ORTOptimizer.from_pretrained(plain).optimize(optimization, save_dir=output, file_suffix=None)
    return output


class _quiet_onnxruntime:
    """Raise ORT's default log level while building sessions (fp16 on a CPU host logs loud CUDA errors)."""

    def __enter__(self):
        import onnxruntime as ort

        ort.set_default_logger_severity(4)

    def __exit__(self, *exc):
        import onnxruntime as ort

        ort.set_default_logger_severity(2)


def parity_sample(texts: list[str], labels, limit: int | None):
    """At most ``limit`` texts (and their labels), evenly spaced so every part of the eval set is seen."""
    if limit is None or len(texts) <= limit:
        return texts, labels
    picked = [i * len(texts) // limit for i in range(limit)]
    return [texts[i] for i in picked], (None if labels is None else [labels[i] for i in picked])
