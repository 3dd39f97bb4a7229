"""int8 for the CPU: which nodes stay fp32, the two quantization schemes, and the ladder that keeps the first
scheme whose parity holds.

Both schemes quantize the *plain* Optimum export (quantizing an O2/O3 graph fails in shape inference):

- ``dynamic``: ONNX Runtime's dynamic quantization through Optimum's ``ORTQuantizer`` (MatMulInteger). Weights
  per channel; activations get one scale per tensor, taken over the whole padded batch at run time. The fastest
  (about 2.2-2.6x fp32 on 2 cores), but one outlier activation coarsens every other value of its tensor: on the
  financial tweets its label agreement sat on the 0.99 floor (under it in 2 of the last 5 whole runs).
- ``blockwise``: ONNX Runtime's 8-bit ``MatMulNBits`` (``MatMulNBitsQuantizer``, accuracy level 4 = int8
  compute): one scale per block of ``int8_block_size`` inputs, for weights and, at run time, per row for
  activations, so an outlier only coarsens its own block and a text's numbers do not depend on its batch
  mates. About 1.4x fp32; on the tweets models where ``dynamic`` failed, agreement 0.996 (1.000 with the
  fp32 fallback for near-ties).

``export.int8_schemes`` lists the schemes to try in order; :func:`first_int8_that_holds` keeps the first that
passes parity (benchmarks/README.md has the figures).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.recipe import ExportConfig

Progress = Callable[[str], None]
# Judges one int8 candidate (its model.onnx and quantization summary) as it would serve: its parity record.
Int8Judge = Callable[[Path, dict[str, Any]], dict[str, Any]]

# Files an int8 folder keeps next to model.onnx (ORTQuantizer also copies tokenizer files; the bundle has its own).
SIDE_FILES = ("config.json", "ort_config.json")
BLOCKWISE_BITS = 8
BLOCKWISE_ACCURACY_LEVEL = 4  # MatMulNBits computes in int8 (activations quantized per block at run time)

_LAYER = re.compile(r"/encoder/layer\.(\d+)/")
_HEAD = ("/classifier/", "/pooler/")
_FFN_OUTPUT = re.compile(r"/encoder/layer\.\d+/output/dense/")


def quantization_isa() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "avx2"
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def int8_settings_for(config: ExportConfig, task: str) -> ExportConfig:
    """``config`` with its 'auto' int8 settings decided for ``task``."""
    if config.int8_fp32_ffn_output == "auto":
        config = config.model_copy(update={"int8_fp32_ffn_output": task == "ner"})
    return config


def int8_exclusions(onnx_path: Path, config: ExportConfig) -> tuple[list[str], dict[str, int]]:
    """Names of the nodes int8 keeps in fp32 under ``config``, and how many nodes each rule kept.

    Node names are Optimum's export names (``/bert/encoder/layer.5/output/dense/MatMul``, ``/classifier/...``):
    ``int8_weights_only`` keeps the MatMuls without a weight operand (attention's QK^T and softmax x V, whose
    per-batch activation scales cost the most agreement), ``int8_fp32_head`` the classifier and pooler,
    ``int8_fp32_last_layers`` every node of the top N encoder layers, ``int8_fp32_ffn_output`` each layer's
    feed-forward output projection.
    """
    import onnx

    if config.int8_fp32_ffn_output == "auto":
        raise ValueError(
            "int8_fp32_ffn_output is 'auto': decide it with int8_settings_for(config, task) first"
        )
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    layers = [int(m.group(1)) for node in graph.node if (m := _LAYER.search(node.name))]
    top = max(layers, default=-1)
    kept: dict[str, list[str]] = {"activation_matmuls": [], "head": [], "last_layers": [], "ffn_output": []}
    for node in graph.node:
        # ORT's quantizer turns a Gemm into MatMul + Add (named "<gemm>_MatMul") and quantizes that MatMul
        gemm = node.op_type == "Gemm" and "MatMul" in config.int8_operators
        if node.op_type not in config.int8_operators and not gemm:
            continue
        layer = _LAYER.search(node.name)
        if config.int8_fp32_head and any(part in node.name for part in _HEAD):
            kept["head"].append(node.name)
        elif layer and top - int(layer.group(1)) < config.int8_fp32_last_layers:
            kept["last_layers"].append(node.name)
        elif config.int8_fp32_ffn_output and _FFN_OUTPUT.search(node.name):
            kept["ffn_output"].append(node.name)
        elif (
            config.int8_weights_only
            and node.op_type == "MatMul"
            and not any(name in weights for name in node.input[:2])
        ):
            kept["activation_matmuls"].append(node.name)
    gemms = {node.name for node in graph.node if node.op_type == "Gemm"}
    names = sorted(
        {
            n
            for group in kept.values()
            for name in group
            for n in (name, f"{name}_MatMul")
            if n == name or name in gemms
        }
    )
    return names, {rule: len(group) for rule, group in kept.items()}


def _kept_settings(config: ExportConfig, kept: dict[str, int]) -> dict[str, Any]:
    return {
        "weights_only": config.int8_weights_only,
        "fp32_head": config.int8_fp32_head,
        "fp32_last_layers": config.int8_fp32_last_layers,
        "fp32_ffn_output": config.int8_fp32_ffn_output,
        "nodes_kept_fp32": kept,
    }


def quantize_int8(plain: Path, output: Path, config: ExportConfig) -> tuple[Path, dict[str, Any]]:
    """The ``dynamic`` scheme: Optimum's dynamic int8 of the plain export as ``config.int8_*`` says; returns
    the folder and what was done."""
    from optimum.onnxruntime import AutoQuantizationConfig, ORTQuantizer

    excluded, kept = int8_exclusions(plain / "model.onnx", config)
    isa = quantization_isa()
    make_config = getattr(AutoQuantizationConfig, isa)
    options: dict[str, Any] = {
        "is_static": False,
        "per_channel": config.int8_per_channel,
        "nodes_to_exclude": excluded,
        "operators_to_quantize": list(config.int8_operators),
    }
    if isa == "avx2":  # only the avx2 preset takes reduce_range; VNNI has no 8-bit overflow to avoid
        options["reduce_range"] = config.int8_reduce_range
    ORTQuantizer.from_pretrained(plain, file_name="model.onnx").quantize(
        make_config(**options), save_dir=output, file_suffix=None
    )
    summary = {
        "scheme": "dynamic",
        "isa": isa,
        "per_channel": config.int8_per_channel,
        "reduce_range": config.int8_reduce_range if isa == "avx2" else False,
        "operators": list(config.int8_operators),
        **_kept_settings(config, kept),
    }
    return output, summary


def quantize_int8_blockwise(plain: Path, output: Path, config: ExportConfig) -> tuple[Path, dict[str, Any]]:
    """The ``blockwise`` scheme: every weight MatMul that ``config`` does not keep in fp32 becomes an 8-bit
    ``MatMulNBits`` with one scale per ``int8_block_size`` inputs, computed in int8 (accuracy level 4)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    excluded, kept = int8_exclusions(plain / "model.onnx", config)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(plain / "model.onnx")),
        bits=BLOCKWISE_BITS,
        block_size=config.int8_block_size,
        is_symmetric=True,
        accuracy_level=BLOCKWISE_ACCURACY_LEVEL,
        nodes_to_exclude=excluded,
    )
    quantizer.process()
    output.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(output / "model.onnx"), use_external_data_format=False)
    shutil.copy2(plain / "config.json", output / "config.json")
    summary = {
        "scheme": "blockwise",
        "bits": BLOCKWISE_BITS,
        "block_size": config.int8_block_size,
        "accuracy_level": BLOCKWISE_ACCURACY_LEVEL,
        "operators": ["MatMul"],
        **_kept_settings(config, kept),
    }
    return output, summary


QUANTIZERS = {"dynamic": quantize_int8, "blockwise": quantize_int8_blockwise}


def plan_fp32_fallback(
    summary: dict[str, Any], task: str, multi_label: bool, config: ExportConfig
) -> float | None:
    """Record in ``summary`` the near-tie margin under which the predictor answers a single-label classifier's
    texts with fp32 instead of int8 (services/predictor.py); parity then judges int8 as it serves."""
    margin = config.int8_fp32_fallback_margin
    if task == "classification" and not multi_label and margin > 0:
        summary["fp32_fallback_margin"] = margin
        return margin
    return None


def describe_int8(summary: dict[str, Any]) -> str:
    kept = ", ".join(f"{n} {rule.replace('_', ' ')}" for rule, n in summary["nodes_kept_fp32"].items() if n)
    if summary["scheme"] == "blockwise":
        how = f"{summary['bits']}-bit MatMulNBits, blocks of {summary['block_size']}"
    else:
        how = (
            f"{summary['isa']}, {'+'.join(summary['operators'])}, per-channel={summary['per_channel']}, "
            f"reduce-range={summary['reduce_range']}"
        )
    return f"{summary['scheme']}: {how}; fp32 kept: {kept or 'nothing'}"


def _quantize_into(
    target: Path, plain: Path, work: Path, scheme: str, settings: ExportConfig
) -> dict[str, Any]:
    """Quantize ``plain`` with ``scheme`` and put its model.onnx (with side files) in ``target``; its summary."""
    if target.exists():
        shutil.rmtree(target)
    built, summary = QUANTIZERS[scheme](plain, work / f"int8-{scheme}", settings)
    target.mkdir(parents=True)
    for name in ("model.onnx", *SIDE_FILES):
        if (built / name).is_file():
            shutil.copy2(built / name, target / name)
    return summary


def first_int8_that_holds(
    plain: Path,
    target: Path,
    work: Path,
    config: ExportConfig,
    task: str,
    multi_label: bool,
    judge: Int8Judge,
    say: Progress,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Quantize with each of ``config.int8_schemes`` in turn into ``target`` and judge it; stop at the first
    whose parity holds. Returns (the last parity record, its quantization summary, every attempt)."""
    settings = int8_settings_for(config, task)
    attempts: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for position, scheme in enumerate(config.int8_schemes):
        started = time.perf_counter()
        try:
            summary = _quantize_into(target, plain, work, scheme, settings)
        except Exception as exc:  # a graph this quantizer cannot handle: int8 is optional, fp32 still serves
            seconds = time.perf_counter() - started
            summary = {"scheme": scheme}
            record = {"scheme": scheme, "passed": False, "failures": [f"{scheme} quantization failed: {exc}"]}
            say(f"int8: {record['failures'][0]}")
        else:
            seconds = time.perf_counter() - started
            margin = plan_fp32_fallback(summary, task, multi_label, config)
            say(
                f"int8: {describe_int8(summary)} ({seconds:.1f}s)"
                + (f"; near-ties (top two probabilities within {margin}) answered by fp32" if margin else "")
            )
            record = {"scheme": scheme, **judge(target / "model.onnx", summary)}
        attempts.append(
            {
                "scheme": scheme,
                "passed": record.get("passed"),
                "failures": record.get("failures", []),
                "label_agreement": record.get("label_agreement"),
                "macro_f1_drop_vs_pytorch": record.get("macro_f1_drop_vs_pytorch"),
                "quantize_s": round(seconds, 1),
            }
        )
        remaining = config.int8_schemes[position + 1 :]
        if record.get("passed") is not False or not remaining:
            break
        say(f"int8 ({scheme}) failed ({'; '.join(record['failures'])}): trying {remaining[0]}")
    return record, summary, attempts
