"""What domain adaptation bought on the task, measured before fine-tuning on it.

Continued pretraining often does not help (forgetting, a small or off-domain corpus, too few steps on a CPU), so
the adapted encoder has to earn its place. Three measures, all on a validation split carved out of the training
set (the evaluation set is never seen):

- ``short_finetune`` (default, ~2.5 minutes for ~5,000 rows on 2 CPU cores): the task model is fine-tuned from each encoder
  for one epoch over at most SHORT_FINETUNE_MAX_ROWS rows of the rest of the training set, with the recipe's
  fine-tuning settings, the same seed and the same batches; macro-F1 (entity F1 for NER) on the validation
  split. On real data it agreed with the gain of whole fine-tunes where the probe did not
  (benchmarks/README.md, "Session 21 figures").
- ``probe`` (seconds): a linear probe. The frozen encoder's features (mean-pooled sentence vectors for
  classification; the first word-piece of each word for NER) feed a logistic regression. Adaptation always makes
  frozen features more domain-shaped, and fine-tuning re-learns them: on real data the probe overstated the
  fine-tuned gain in every case measured.
- ``finetune`` (exact, costs two whole fine-tunes): as ``short_finetune`` with every row and epoch.

``gain = adapted - base``. The caller keeps the adapted encoder only when ``gain >= adapt.min_gain +
adapt.gain_noise_margin * stderr``, where ``stderr`` is the gain's standard error from a paired bootstrap over
the validation rows: on a few hundred rows a gain of a few tenths of a point is noise, and an encoder kept on
noise still carries its forgetting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from models.recipe import Recipe

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.2
PROBE_MAX_ROWS = 4000  # rows embedded per encoder; beyond this the probe's estimate barely moves
SHORT_FINETUNE_MAX_ROWS = 4000  # rows of the one-epoch fine-tunes: bounds the check's cost on large sets
EMBED_BATCH_SIZE = 64
BOOTSTRAP_RESAMPLES = 200


@dataclass(frozen=True)
class AdaptationGain:
    """The task-level effect of adaptation and what was done about it."""

    method: str  # "short_finetune" | "probe" | "finetune"
    metric: str  # "macro_f1" | "entity_f1"
    base: float
    adapted: float
    gain: float  # adapted - base
    min_gain: float
    kept: str  # "adapted" | "base"
    n_fit: int
    n_validation: int
    seconds: float
    stderr: float | None = None  # the gain's paired-bootstrap standard error over the validation rows
    noise_margin: float = 0.0  # standard errors the gain had to clear above min_gain

    @property
    def threshold(self) -> float:
        return self.min_gain + self.noise_margin * (self.stderr or 0.0)

    @property
    def helped(self) -> bool:
        return self.kept == "adapted"

    def sentence(self) -> str:
        verdict = (
            "keeping the adapted encoder"
            if self.helped
            else "adaptation did not help: fine-tuning the base encoder instead"
        )
        needs = f"needs >= {self.threshold:+.4f}"
        if self.stderr is not None:
            needs += f": min_gain {self.min_gain:+.4f} + {self.noise_margin:g} x stderr {self.stderr:.4f}"
        return (
            f"adaptation gain ({self.method}, validation {self.metric}): base {self.base:.4f}, adapted "
            f"{self.adapted:.4f}, gain {self.gain:+.4f} ({needs}); {verdict}"
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"summary": self.sentence()}


def validation_split(recipe: Recipe, train_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    from models.data import stratified_split

    column = "label" if recipe.task == "classification" and not recipe.finetune.multi_label else None
    return stratified_split(train_df, VALIDATION_FRACTION, recipe.seed, column=column)


def _subsample(df: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    return df if len(df) <= limit else df.sample(n=limit, random_state=seed).reset_index(drop=True)


def _encoder(encoder_dir: Path):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a masked-LM checkpoint loaded as AutoModel: its head is "unused"
    try:
        return AutoTokenizer.from_pretrained(encoder_dir), AutoModel.from_pretrained(encoder_dir).eval()
    finally:
        hf_logging.set_verbosity(verbosity)


def _hidden_states(encoder_dir: Path, items: list, max_length: int, say=None, **options):
    """(item indices, tokenised batch, last hidden states) of the frozen encoder, EMBED_BATCH_SIZE items at a
    time, shortest items first: items of similar length share a batch, so little of each batch is padding."""
    import torch

    from models.progress import Heartbeat

    tokenizer, model = _encoder(encoder_dir)
    # shortest first: characters of a text, words of a sentence
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    heartbeat = Heartbeat(say, "[adaptation-gain] embedded", len(items))
    with torch.inference_mode():
        for start in range(0, len(items), EMBED_BATCH_SIZE):
            heartbeat.beat(start)
            indices = order[start : start + EMBED_BATCH_SIZE]
            batch = tokenizer(
                [items[i] for i in indices],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
                **options,
            )
            yield indices, batch, model(**batch).last_hidden_state


def sentence_features(encoder_dir: Path, texts: list[str], max_length: int, say=None) -> np.ndarray:
    """Mean-pooled last hidden states (the pooling sentence encoders such as MiniLM were trained with)."""
    import numpy as np

    rows: list[int] = []
    chunks = []
    for indices, batch, hidden in _hidden_states(encoder_dir, texts, max_length, say):
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        rows += indices
    pooled = np.concatenate(chunks)
    features = np.empty_like(pooled)
    features[rows] = pooled  # back in the callers' order
    return features


def word_features(
    encoder_dir: Path, sentences: list[list[str]], max_length: int, say=None
) -> list[np.ndarray]:
    """Per sentence, one vector per word (its first word-piece); words cut by max_length are absent."""
    out: list = [None] * len(sentences)
    for indices, batch, hidden in _hidden_states(
        encoder_dir, sentences, max_length, say, is_split_into_words=True
    ):
        states = hidden.numpy()
        for row, index in enumerate(indices):
            first: dict[int, int] = {}
            for position, word in enumerate(batch.word_ids(row)):
                if word is not None and word not in first:
                    first[word] = position
            out[index] = states[row, [first[w] for w in sorted(first)]]
    return out


def _probe_classification(
    recipe: Recipe, encoder_dir: Path, fit: pd.DataFrame, validation: pd.DataFrame, max_length: int, say=None
) -> tuple[list, list]:
    """(gold, predicted) validation labels of a logistic regression on the frozen encoder's sentence vectors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_fit = sentence_features(encoder_dir, list(fit["text"].astype(str)), max_length, say)
    x_val = sentence_features(encoder_dir, list(validation["text"].astype(str)), max_length, say)
    scaler = StandardScaler().fit(x_fit)
    probe = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=recipe.seed)
    probe.fit(scaler.transform(x_fit), list(fit["label"].astype(str)))
    predicted = probe.predict(scaler.transform(x_val))
    return list(validation["label"].astype(str)), list(predicted)


def _probe_ner(
    recipe: Recipe, encoder_dir: Path, fit: pd.DataFrame, validation: pd.DataFrame, max_length: int, say=None
) -> tuple[list, list]:
    """(gold, predicted) tag sequences of a token-wise logistic regression on the frozen encoder's word vectors."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    fit_vectors = word_features(encoder_dir, [list(t) for t in fit["tokens"]], max_length, say)
    val_vectors = word_features(encoder_dir, [list(t) for t in validation["tokens"]], max_length, say)
    x_fit = np.concatenate(fit_vectors)
    y_fit = [
        tag
        for vectors, tags in zip(fit_vectors, fit["tags"], strict=True)
        for tag in list(tags)[: len(vectors)]
    ]
    scaler = StandardScaler().fit(x_fit)
    probe = LogisticRegression(max_iter=500, random_state=recipe.seed)
    probe.fit(scaler.transform(x_fit), y_fit)
    gold, predicted = [], []
    for vectors, tags in zip(val_vectors, validation["tags"], strict=True):
        tags = list(tags)
        guess = list(probe.predict(scaler.transform(vectors))) if len(vectors) else []
        gold.append(tags)
        predicted.append(_repair_bio(guess + ["O"] * (len(tags) - len(guess))))
    return gold, predicted


def classification_counts(labels: list[str], gold: list, predicted: list) -> np.ndarray:
    """Per row: (tp, fp, fn) for each declared class, so macro-F1 of any resample is a sum away."""
    import numpy as np

    is_gold = np.array([[g == label for label in labels] for g in gold], dtype=bool).reshape(-1, len(labels))
    is_predicted = np.array([[p == label for label in labels] for p in predicted], dtype=bool)
    return indicator_counts(is_gold, is_predicted.reshape(-1, len(labels)))


def indicator_counts(is_gold: np.ndarray, is_predicted: np.ndarray) -> np.ndarray:
    """Per row: (tp, fp, fn) for each class column of two (rows, classes) boolean matrices (one class per row,
    or several for a multi-label task)."""
    import numpy as np

    counts = np.zeros((len(is_gold), 3 * is_gold.shape[1]))
    counts[:, 0::3] = is_gold & is_predicted
    counts[:, 1::3] = ~is_gold & is_predicted
    counts[:, 2::3] = is_gold & ~is_predicted
    return counts


def macro_f1_from_counts(totals: np.ndarray) -> np.ndarray:
    """Macro-F1 from summed (tp, fp, fn) per class; ``totals`` is (..., 3 * classes). A class with no gold
    and no prediction scores 0, as sklearn's ``zero_division=0`` does."""
    import numpy as np

    tp, fp, fn = totals[..., 0::3], totals[..., 1::3], totals[..., 2::3]
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)
    return f1.mean(axis=-1)


def entity_counts(gold: list[list[str]], predicted: list[list[str]]) -> np.ndarray:
    """Per sentence: (exactly matched entities, predicted entities, gold entities)."""
    import numpy as np
    from seqeval.metrics.sequence_labeling import get_entities

    rows = []
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        gold_spans, predicted_spans = set(get_entities(gold_tags)), set(get_entities(predicted_tags))
        rows.append((len(gold_spans & predicted_spans), len(predicted_spans), len(gold_spans)))
    return np.array(rows, dtype=float).reshape(-1, 3)


def entity_f1_from_counts(totals: np.ndarray) -> np.ndarray:
    import numpy as np

    tp, predicted, gold = totals[..., 0], totals[..., 1], totals[..., 2]
    denominator = predicted + gold
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)


def paired_bootstrap_stderr(metric, base_counts: np.ndarray, adapted_counts: np.ndarray, seed: int) -> float:
    """Standard error of ``metric(adapted) - metric(base)``, resampling the same validation rows for both.

    ``*_counts`` hold per-row additive statistics (see ``classification_counts``/``entity_counts``) and
    ``metric`` turns their sums into the score, so each resample is one weighted sum instead of a rescoring.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(base_counts)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES).astype(float)
    gains = metric(weights @ adapted_counts) - metric(weights @ base_counts)
    return float(np.std(gains, ddof=1))


def _repair_bio(tags: list[str]) -> list[str]:
    """A token-wise probe can emit I-X after O; read it as B-X, as a CRF-free tagger is usually decoded."""
    fixed, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        fixed.append(tag)
        previous = tag
    return fixed


def _finetuned_predictions(
    recipe: Recipe,
    encoder_dir: Path,
    fit: pd.DataFrame,
    validation: pd.DataFrame,
    work_dir: Path,
    say,
    *,
    one_epoch: bool,
) -> tuple[list, list]:
    """(gold, predicted) validation rows of a task model fine-tuned from ``encoder_dir`` on ``fit`` with the
    recipe's settings, without augmentation or early stopping (and for ``one_epoch``, for one epoch): tag sequences
    for NER, class names for classification, (rows, labels) boolean matrices for a multi-label task."""
    import numpy as np

    from models.training.task_model import encode_frame, task_labels
    from models.training.trainer import prediction_logits, tag_sequences, train_task_model

    update: dict = {"early_stopping_patience": 0, "augment_fraction": 0.0}
    if one_epoch:
        # a recipe's fixed max_steps still bounds it: the check never trains longer than the fine-tune
        update |= {"epochs": 1.0, "min_epochs": 0.0}
    run = train_task_model(
        recipe, recipe.finetune.model_copy(update=update), encoder_dir, fit, None, work_dir, say
    )
    output = run.trainer.predict(encode_frame(recipe, run.config, run.tokenizer, validation))
    labels = task_labels(recipe)
    if recipe.task == "ner":
        return tag_sequences(labels, output)  # scored at the positions the Trainer's metrics score
    logits = prediction_logits(output)
    if recipe.finetune.multi_label:
        return list(np.asarray(output.label_ids) > 0.5), list(np.asarray(logits) > 0)
    return [labels[i] for i in output.label_ids], [labels[i] for i in logits.argmax(-1)]


def measure_adaptation_gain(
    recipe: Recipe,
    base_dir: Path,
    adapted_dir: Path,
    train_df: pd.DataFrame,
    work_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> AdaptationGain:
    """Score ``base_dir`` and ``adapted_dir`` on the task (``recipe.adapt.gain_check``) and decide which to keep."""
    import numpy as np

    from models.training.task_model import choose_max_length, position_limit, token_lengths

    say = progress or logger.info
    method = recipe.adapt.gain_check
    started = time.perf_counter()
    fit, validation = validation_split(recipe, train_df)
    metric = "entity_f1" if recipe.task == "ner" else "macro_f1"
    predictions: dict = {}
    if method == "probe":
        fit = _subsample(fit, PROBE_MAX_ROWS, recipe.seed)
        probe = _probe_ner if recipe.task == "ner" else _probe_classification
        for name, folder in (("base", base_dir), ("adapted", adapted_dir)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
            length = (
                int(recipe.finetune.max_length)
                if recipe.finetune.max_length != "auto"
                else choose_max_length(token_lengths(recipe, tokenizer, fit), position_limit(folder))
            )
            say(
                f"[adaptation-gain] linear probe on the {name} encoder ({len(fit)} fit / {len(validation)} validation rows)"
            )
            gold, predictions[name] = probe(recipe, Path(folder), fit, validation, length, say)
    else:
        one_epoch = method == "short_finetune"
        if one_epoch:
            fit = _subsample(fit, SHORT_FINETUNE_MAX_ROWS, recipe.seed)
        for name, folder in (("base", base_dir), ("adapted", adapted_dir)):
            say(
                f"[adaptation-gain] fine-tuning from the {name} encoder to compare ({len(fit)} fit / "
                f"{len(validation)} validation rows{', one epoch' if one_epoch else ''})"
            )
            gold, predictions[name] = _finetuned_predictions(
                recipe, Path(folder), fit, validation, Path(work_dir) / name, say, one_epoch=one_epoch
            )
    # per-row counts score both encoders and every bootstrap resample (sums of counts, no rescoring)
    if recipe.task == "ner":
        counts = {name: entity_counts(gold, predicted) for name, predicted in predictions.items()}
        metric_from_counts = entity_f1_from_counts
    elif method != "probe" and recipe.finetune.multi_label:
        counts = {name: indicator_counts(np.array(gold), np.array(p)) for name, p in predictions.items()}
        metric_from_counts = macro_f1_from_counts
    else:
        labels = list(recipe.data.labels)
        counts = {name: classification_counts(labels, gold, p) for name, p in predictions.items()}
        metric_from_counts = macro_f1_from_counts
    scores = {name: float(metric_from_counts(rows.sum(axis=0))) for name, rows in counts.items()}
    stderr = paired_bootstrap_stderr(metric_from_counts, counts["base"], counts["adapted"], recipe.seed)
    gain = scores["adapted"] - scores["base"]
    margin = recipe.adapt.gain_noise_margin
    threshold = recipe.adapt.min_gain + margin * stderr
    result = AdaptationGain(
        method=method,
        metric=metric,
        base=round(scores["base"], 6),
        adapted=round(scores["adapted"], 6),
        gain=round(gain, 6),
        min_gain=recipe.adapt.min_gain,
        kept="adapted" if gain >= threshold else "base",
        n_fit=len(fit),
        n_validation=len(validation),
        seconds=round(time.perf_counter() - started, 1),
        stderr=round(stderr, 6),
        noise_margin=margin,
    )
    say(f"[adaptation-gain] {result.sentence()}")
    return result
