"""Warm-up of a newly initialised MLM (and NSP) head with the encoder frozen, before measuring and adapting.

all-MiniLM-L6-v2 ships no MLM head, so ``BertForMaskedLM`` starts with a random one: its loss (~10.7 nats on
any text) says nothing about what the encoder knows, so "general loss before" and the forgetting delta would be
meaningless, and adapting through a random head sends noisy gradients into the encoder (the reason for
linear-probe-then-finetune). So the new head is trained alone first, on a mix of domain and general text so it
is fair to both.

How, cheaply: up to ``HEAD_WARMUP_MAX_SEQUENCES`` sequences are masked with the training collator and run once
through the frozen encoder (eval mode, no gradients); only the hidden states at masked positions (and the pooled
output, for NSP) are kept. The head then trains on those cached vectors, which costs the head alone (the
decoder matmul at ~15% of the tokens), not the encoder. The decoder weight is tied to the word embeddings, so it
is part of the encoder and stays frozen; the head's transform (dense + LayerNorm), its output bias and the NSP
classifier train.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.progress import advance
from models.training.forgetting import mlm_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Distinct masked sequences run through the encoder once; the steps cycle over their cached outputs. Half as many
# left the domain side under-fitted (benchmarks/README.md, "Adaptation constants").
HEAD_WARMUP_MAX_SEQUENCES = 1280
# Short texts (tweets, headlines) give few masked targets per sequence, and a head trained on a few thousand
# targets memorises them. So the count grows for short texts until about this many word-pieces are encoded, up
# to HEAD_WARMUP_SEQUENCE_CAP.
HEAD_WARMUP_TOKENS = 64_000
HEAD_WARMUP_SEQUENCE_CAP = 4096
HELDOUT_SHARE = 0.1  # of the cached masked targets, scored to keep the head from the step it generalised best
# Masked tokens per step (with adapt.head_warmup_steps and its rate: benchmarks/README.md).
TOKENS_PER_STEP = 128
ENCODE_BATCH_SIZE = 32  # no gradients: a larger batch than training is affordable
HEAD_FILE = "head.safetensors"
RECORD_FILE = "head_warmup.json"


class HeadWarmupError(ValueError):
    """The head cannot be warmed up as asked; the message says why and what to change."""


@dataclass(frozen=True)
class HeadWarmupResult:
    """What the warm-up did; ``loss_curve`` holds (step, mean training loss since the previous point)."""

    steps: int
    learning_rate: float
    sequences: int
    domain_sequences: int
    general_sequences: int
    masked_tokens: int
    trained_parameters: int
    parameter_names: list[str]
    loss_curve: list[tuple[int, float]]
    seconds: float
    bias_from_token_frequencies: bool = False
    reused: bool = False
    heldout_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss on held-out targets)
    best_step: int | None = None  # the step whose head was kept (lowest held-out loss)

    def to_metrics(self) -> dict:
        metrics = asdict(self)
        metrics["loss_curve"] = [[step, round(loss, 4)] for step, loss in self.loss_curve]
        metrics["loss_first"] = round(self.loss_curve[0][1], 4) if self.loss_curve else None
        metrics["loss_last"] = round(self.loss_curve[-1][1], 4) if self.loss_curve else None
        metrics["heldout_curve"] = [[step, round(loss, 4)] for step, loss in self.heldout_curve]
        metrics["heldout_loss_best"] = min((loss for _, loss in self.heldout_curve), default=None)
        return metrics


def head_parameter_names(model: PreTrainedModel, missing_keys: Iterable[str]) -> list[str]:
    """Parameters the checkpoint did not provide and that lie outside the encoder body: the MLM/NSP heads (and
    BERT's pooler if the checkpoint lacked it, since NSP reads it). The tied decoder weight is excluded: it is
    the word-embedding matrix. Empty when the head was pretrained."""
    missing = set(missing_keys)
    embedding = model.get_input_embeddings().weight
    prefix = model.base_model_prefix
    body = (f"{prefix}.embeddings.", f"{prefix}.encoder.")
    names, seen = [], set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if name not in missing or name.startswith(body) or parameter is embedding or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        names.append(name)
    return names


def _mix(domain: list[dict], general: list[dict], count: int, seed: int) -> tuple[list[dict], int, int]:
    """Half domain, half general sequences (all domain without general text); sampled with repetition when a
    source is short — a repeated sequence is masked differently."""
    rng = random.Random(seed)

    def take(pool: list[dict], wanted: int) -> list[dict]:
        if not pool or wanted <= 0:
            return []
        return rng.sample(pool, wanted) if wanted <= len(pool) else rng.choices(pool, k=wanted)

    general_part = take(general, count // 2 if domain else count)
    domain_part = take(domain, count - len(general_part))
    return domain_part + general_part, len(domain_part), len(general_part)


def _sequence_count(features: list[dict]) -> int:
    """Sequences to encode: HEAD_WARMUP_MAX_SEQUENCES, more for short texts (about HEAD_WARMUP_TOKENS)."""
    if not features:
        return HEAD_WARMUP_MAX_SEQUENCES
    mean_length = sum(len(f["input_ids"]) for f in features) / len(features)
    by_tokens = int(HEAD_WARMUP_TOKENS / max(mean_length, 1.0))
    return max(HEAD_WARMUP_MAX_SEQUENCES, min(HEAD_WARMUP_SEQUENCE_CAP, by_tokens))


def _heldout_loss(head, hidden, labels, rows) -> float:
    import torch

    total = 0.0
    with torch.no_grad():
        for start in range(0, len(rows), 1024):
            chunk = rows[start : start + 1024]
            total += float(
                torch.nn.functional.cross_entropy(head(hidden[chunk]).float(), labels[chunk], reduction="sum")
            )
    return total / max(1, len(rows))


def _cache_encoder_outputs(model, features: list[dict], collator, say: Callable[[str], None] | None = None):
    """(hidden states at masked positions, their labels, pooled outputs, NSP labels) from one frozen pass."""
    import torch

    from models.progress import Heartbeat

    hidden_parts, label_parts, pooled_parts, nsp_parts = [], [], [], []
    ordered = sorted(features, key=lambda f: len(f["input_ids"]))  # similar lengths: little padding
    keys = ("input_ids", "attention_mask", "token_type_ids")
    heartbeat = Heartbeat(say, "[adapt:head-warmup] encoded", len(ordered))
    with torch.no_grad():
        for start in range(0, len(ordered), ENCODE_BATCH_SIZE):
            heartbeat.beat(start)
            batch = collator(ordered[start : start + ENCODE_BATCH_SIZE])
            inputs = {k: batch[k].to(model.device) for k in keys if k in batch}
            output = model.base_model(**inputs)
            labels = batch["labels"].to(model.device)
            selected = labels != -100
            hidden_parts.append(output[0][selected])
            label_parts.append(labels[selected])
            if "next_sentence_label" in batch:
                if getattr(output, "pooler_output", None) is None:
                    raise HeadWarmupError(
                        "mlm+nsp head warm-up needs a model with a pooler (BertForPreTraining)"
                    )
                pooled_parts.append(output.pooler_output)
                nsp_parts.append(batch["next_sentence_label"].to(model.device))
    hidden, labels = torch.cat(hidden_parts), torch.cat(label_parts)
    if not pooled_parts:
        return hidden, labels, None, None
    return hidden, labels, torch.cat(pooled_parts), torch.cat(nsp_parts)


class _Batches:
    """Endless shuffled minibatches of row indices (a new permutation every pass)."""

    def __init__(self, rows: int, size: int, generator):
        self.rows, self.size, self.generator = rows, max(1, min(size, rows)), generator
        self.order, self.position = None, rows

    def next(self):
        import torch

        if self.position + self.size > self.rows:
            self.order, self.position = torch.randperm(self.rows, generator=self.generator), 0
        chosen = self.order[self.position : self.position + self.size]
        self.position += self.size
        return chosen


def _init_bias_to_prior(head, trained: list, labels) -> bool:
    """Start the new output bias at the log-frequency of the warm-up's target tokens (the usual output-bias
    initialisation), so the head begins at the unigram loss instead of above ln(vocabulary): Adam moves a bias by
    about the learning rate per step, far too slowly to learn frequencies several nats apart in a few hundred
    steps. Tokens never seen get together the share of tokens seen once (Good-Turing). False when the bias is
    not new (not among ``trained``) or has no vocabulary shape."""
    import torch

    bias = getattr(head, "bias", None)
    if bias is None or bias.dim() != 1 or not any(bias is p for p in trained):
        return False
    counts = torch.bincount(labels.cpu(), minlength=bias.shape[0]).double()
    if counts.shape[0] != bias.shape[0]:
        return False
    total, unseen = counts.sum(), int((counts == 0).sum())
    unseen_share = float((counts == 1).sum() / total) if unseen else 0.0
    unseen_share = min(max(unseen_share, 1e-3), 0.5) if unseen else 0.0
    probabilities = torch.where(
        counts > 0, counts / total * (1 - unseen_share), unseen_share / max(unseen, 1)
    )
    with torch.no_grad():
        bias.copy_(probabilities.log().to(bias.dtype))
    return True


def _head_to_train(model: PreTrainedModel, parameter_names: list[str], steps: int):
    """(the MLM head, its parameters by name) after checking the warm-up can run; HeadWarmupError if not."""
    if steps <= 0:
        raise HeadWarmupError("head warm-up needs steps > 0; set adapt.head_warmup_steps to 0 to skip it")
    by_name = dict(model.named_parameters(remove_duplicate=False))
    unknown = [name for name in parameter_names if name not in by_name]
    if unknown or not parameter_names:
        raise HeadWarmupError(f"no such head parameters to warm up: {unknown or parameter_names}")
    head = mlm_head(model)
    if head is None:
        raise HeadWarmupError(
            f"cannot find the MLM head of {type(model).__name__} (no cls.predictions/lm_head)"
        )
    return head, by_name


@dataclass
class _Targets:
    """Cached encoder outputs and masked targets, split into the rows the head fits and the held-out rows."""

    hidden: Any  # fit rows
    labels: Any
    hidden_all: Any
    labels_all: Any
    heldout_rows: Any
    held: int
    pooled: Any
    nsp_labels: Any


def _split_targets(hidden, labels, pooled, nsp_labels, generator) -> _Targets:
    import torch

    order = torch.randperm(len(labels), generator=generator)
    held = int(len(labels) * HELDOUT_SHARE) if len(labels) >= 100 else 0
    heldout_rows, fit_rows = order[:held], order[held:]
    return _Targets(
        hidden[fit_rows], labels[fit_rows], hidden, labels, heldout_rows, held, pooled, nsp_labels
    )


def _optimise_head(
    head, nsp_head, trained: list, targets: _Targets, generator, *, steps, learning_rate, batch_size, say
):
    """The AdamW steps; (loss curve, held-out curve, best (loss, step, weights) or None)."""
    import torch

    hidden, labels, pooled, nsp_labels = targets.hidden, targets.labels, targets.pooled, targets.nsp_labels
    mlm_batches = _Batches(len(labels), TOKENS_PER_STEP, generator)
    nsp_batches = _Batches(len(nsp_labels), batch_size, generator) if nsp_head is not None else None
    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=0.0)
    ramp = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / ramp, max(0.0, (steps - step) / max(1, steps - ramp)))
    )
    window = max(1, steps // 20)
    curve: list[tuple[int, float]] = []
    heldout_curve: list[tuple[int, float]] = []
    best: tuple[float, int, list] | None = None
    window_losses: list[float] = []
    for step in range(1, steps + 1):
        rows = mlm_batches.next().to(hidden.device)
        loss = torch.nn.functional.cross_entropy(head(hidden[rows]).float(), labels[rows])
        if nsp_batches is not None and nsp_head is not None:  # both set, or neither
            pairs = nsp_batches.next().to(pooled.device)
            loss = loss + torch.nn.functional.cross_entropy(
                nsp_head(pooled[pairs]).float(), nsp_labels[pairs]
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window_losses.append(loss.item())
        advance("[adapt:head-warmup] steps", step, steps)
        if step % window == 0 or step == steps or step == 1:
            curve.append((step, sum(window_losses) / len(window_losses)))
            window_losses = []
            if targets.held:
                loss_now = _heldout_loss(head, targets.hidden_all, targets.labels_all, targets.heldout_rows)
                heldout_curve.append((step, loss_now))
                if best is None or loss_now < best[0]:
                    best = (loss_now, step, [p.detach().clone() for p in trained])
        if step % max(1, steps // 4) == 0 or step == steps:
            heldout_note = f", held-out {heldout_curve[-1][1]:.4g}" if heldout_curve else ""
            say(f"[adapt:head-warmup] step {step}/{steps} loss {curve[-1][1]:.4g}{heldout_note}")
    return curve, heldout_curve, best


@contextlib.contextmanager
def _training_only(model: PreTrainedModel, trained: list) -> Iterator[None]:
    """Only ``trained`` gets gradients, the model in eval mode (a frozen encoder: no dropout in the cached
    features; BERT's heads have no dropout either); every ``requires_grad`` and the mode restored afterwards."""
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}
    for parameter in model.parameters():
        parameter.requires_grad = False
    for parameter in trained:
        parameter.requires_grad = True
    model.eval()
    try:
        yield
    finally:
        for name, parameter in model.named_parameters(remove_duplicate=False):
            parameter.requires_grad = flags[name]
        model.train(was_training)


def warm_up_head(
    model: PreTrainedModel,
    parameter_names: list[str],
    domain_features: list[dict],
    general_features: list[dict],
    collator,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> HeadWarmupResult:
    """Train only ``parameter_names`` (the new head) for ``steps`` AdamW steps; everything else is untouched.

    ``domain_features`` / ``general_features`` are tokenised training features (what the adaptation's
    collator takes); half the sequences come from each, ``steps × batch_size`` sequences at most
    ``HEAD_WARMUP_MAX_SEQUENCES``. A step sees ``TOKENS_PER_STEP`` masked tokens (and ``batch_size`` sentence
    pairs for NSP). The new output bias starts at the targets' log
    token frequencies; the learning rate rises linearly over the first 10% of the steps, then falls linearly to
    zero. Every parameter's ``requires_grad`` is restored afterwards.
    """
    import torch

    say = progress or (lambda _line: None)
    head, by_name = _head_to_train(model, parameter_names, steps)
    count = min(steps * batch_size, _sequence_count(domain_features + general_features))
    features, n_domain, n_general = _mix(domain_features, general_features, count, seed)
    if not features:
        raise HeadWarmupError("head warm-up has no text: give the corpus (or task texts) some lines")

    started = time.perf_counter()
    trained = [by_name[name] for name in parameter_names]
    with _training_only(model, trained):
        say(
            f"[adapt:head-warmup] encoding {len(features)} masked sequences ({n_domain} domain, {n_general} general)"
        )
        hidden, labels, pooled, nsp_labels = _cache_encoder_outputs(model, features, collator, say)
        if not len(labels):
            raise HeadWarmupError("head warm-up drew no masked tokens: the texts are too short to mask")
        generator = torch.Generator().manual_seed(seed)
        targets = _split_targets(hidden, labels, pooled, nsp_labels, generator)
        prior_initialised = _init_bias_to_prior(head, trained, targets.labels)
        nsp_head = (
            getattr(getattr(model, "cls", None), "seq_relationship", None) if pooled is not None else None
        )
        curve, heldout_curve, best = _optimise_head(
            head,
            nsp_head,
            trained,
            targets,
            generator,
            steps=steps,
            learning_rate=learning_rate,
            batch_size=batch_size,
            say=say,
        )
        if best is not None and best[1] != steps:  # the head memorised its targets after this step
            with torch.no_grad():
                for parameter, kept in zip(trained, best[2], strict=True):
                    parameter.copy_(kept)
            say(f"[adapt:head-warmup] kept the head of step {best[1]} (held-out loss {best[0]:.4g})")
    return HeadWarmupResult(
        steps=steps,
        learning_rate=learning_rate,
        sequences=len(features),
        domain_sequences=n_domain,
        general_sequences=n_general,
        masked_tokens=len(labels),
        trained_parameters=sum(p.numel() for p in trained),
        parameter_names=list(parameter_names),
        loss_curve=curve,
        seconds=round(time.perf_counter() - started, 2),
        bias_from_token_frequencies=prior_initialised,
        heldout_curve=heldout_curve,
        best_step=best[1] if best is not None else None,
    )


def save_head(model: PreTrainedModel, result: HeadWarmupResult, directory: Path, fingerprint: str) -> None:
    """Keep the warmed head so a resumed run measures "before" with the very same head."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    by_name = dict(model.named_parameters(remove_duplicate=False))
    save_file(
        {name: by_name[name].detach().cpu().contiguous() for name in result.parameter_names},
        directory / HEAD_FILE,
    )
    (directory / RECORD_FILE).write_text(json.dumps({"fingerprint": fingerprint, **asdict(result)}))


def load_head(model: PreTrainedModel, directory: Path, fingerprint: str) -> HeadWarmupResult | None:
    """Put a head saved by :func:`save_head` for the same fingerprint into ``model``; None when there is none."""
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    record_file, head_file = directory / RECORD_FILE, directory / HEAD_FILE
    if not (record_file.is_file() and head_file.is_file()):
        return None
    record = json.loads(record_file.read_text())
    if record.pop("fingerprint", None) != fingerprint:
        return None
    by_name = dict(model.named_parameters(remove_duplicate=False))
    weights = load_file(head_file)
    if set(weights) != set(record["parameter_names"]) or any(
        name not in by_name or by_name[name].shape != tensor.shape for name, tensor in weights.items()
    ):
        return None
    with torch.no_grad():
        for name, tensor in weights.items():
            by_name[name].copy_(tensor.to(by_name[name].device))
    record["loss_curve"] = [tuple(point) for point in record["loss_curve"]]
    record["heldout_curve"] = [tuple(point) for point in record.get("heldout_curve", [])]
    record["reused"] = True
    return HeadWarmupResult(**record)
