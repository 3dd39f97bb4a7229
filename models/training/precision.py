"""Training precision: the device and number format a fine-tuning run uses, chosen from the hardware."""

from __future__ import annotations

from models.settings import CPU_BF16_ENV, env_choice
from models.training.task_model import FinetuneError


def cpu_bf16_setting() -> str:
    """``DAPT_CPU_BF16`` checked (auto, on or off); FinetuneError naming the variable otherwise."""
    return env_choice(CPU_BF16_ENV, ("auto", "on", "off"), "auto", error=FinetuneError)


def cpu_trains_in_bf16() -> bool:
    """Whether fine-tuning on the CPU runs in bf16 autocast (weights and optimizer stay fp32).

    ``DAPT_CPU_BF16``: ``auto`` (default) where the CPU computes bf16 natively (AVX512-BF16 or AMX): there it
    trained the tweets classifier 1.6x faster to the same validation curve (benchmarks/README); without native
    support bf16 is emulated and slower than fp32. ``on`` / ``off`` force it."""
    import torch

    value = cpu_bf16_setting()
    if value != "auto":
        return value == "on"
    probes = (
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return any(probe is not None and probe() for probe in probes)


def device_and_precision() -> tuple[str, dict]:
    """(device, TrainingArguments precision flags): bf16 on CUDA where supported, else fp16; on the CPU bf16
    autocast where ``cpu_trains_in_bf16``, else fp32."""
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "cuda", {"bf16": True}
        return "cuda", {"fp16": True}
    if cpu_trains_in_bf16():
        return "cpu", {"use_cpu": True, "bf16": True}
    return "cpu", {"use_cpu": True}


def precision_name(precision: dict) -> str:
    return "bf16" if precision.get("bf16") else "fp16" if precision.get("fp16") else "fp32"
