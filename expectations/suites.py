"""The data contracts, as code: one function per suite, every expectation with the reason it exists.

A suite is a list of :class:`Check`: a stable check name (what severity overrides and reports use), the
frame it reads (see expectations/derived.py for how each derived column is computed), the Great
Expectations expectation that judges it, and the reason, which also becomes the expectation's ``notes``
so it shows in Data Docs. Thresholds come from ``models.recipe.ValidationConfig``; rate limits are GX
``mostly`` values (1 - the allowed rate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import ValidationConfig


@dataclass
class Check:
    name: str
    frame: str  # which derived frame of the suite the expectation runs on
    expectation: Any  # a great_expectations Expectation instance
    reason: str
    show: str | Callable[[pd.Series], str] = "text"  # what an offending row's example displays
    # Cleanable: the offending rows are dropped before training and reported as a warning; the check only
    # stops the run (with its severity) past its ``mostly`` cap.
    cleanable: bool = False

    def __post_init__(self) -> None:
        self.expectation.notes = self.reason
        self.expectation.meta = {**(self.expectation.meta or {}), "check": self.name}


@dataclass
class Suite:
    name: str
    checks: list[Check] = field(default_factory=list)


def quiet_gx_logging() -> None:
    """GX logs its internals at INFO (dozens of lines per import); keep them out unless the user asked."""
    import logging

    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def _gxe():
    quiet_gx_logging()
    import great_expectations.expectations as gxe

    return gxe


def _within_rate(max_rate: float) -> float:
    return round(1.0 - max_rate, 12)


def _pii_example(row: pd.Series) -> str:
    from expectations.derived import mask_pii

    return f"{row['pii']}: {mask_pii(str(row['text']))}"


def _text_present(gxe) -> Check:
    return Check(
        "text_present",
        "rows",
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        "a missing document has nothing to mask or learn from",
    )


def _light_corpus_suite(cfg: ValidationConfig, name: str) -> Suite:
    """Only emptiness and bad characters (general text: measured, never trained on)."""
    gxe = _gxe()
    return Suite(
        name,
        [
            _text_present(gxe),
            Check(
                "text_not_empty",
                "rows",
                gxe.ExpectColumnValuesToBeBetween(column="stripped_chars", min_value=1),
                "empty docs break MLM masking (no tokens to mask) and usually mean a broken export",
            ),
            _bad_chars_check(cfg),
        ],
    )


def _corpus_length_checks(cfg: ValidationConfig, gxe) -> list[Check]:
    return [
        Check(
            "length_chars",
            "rows",
            gxe.ExpectColumnValuesToBeBetween(
                column="stripped_chars",
                max_value=cfg.max_chars,
                mostly=_within_rate(cfg.max_length_outlier_rate),
            ),
            "documents over max_chars are usually concatenated dumps",
            show="text",
        ),
        Check(
            "length_tokens",
            "rows",
            gxe.ExpectColumnValuesToBeBetween(
                column="token_count",
                max_value=cfg.max_tokens,
                mostly=_within_rate(cfg.max_length_outlier_rate),
            ),
            "text past max_tokens subword tokens is truncated away by the encoder and never trained on",
        ),
    ]


def corpus_suite(cfg: ValidationConfig, name: str = "corpus", light: bool = False) -> Suite:
    """Unlabelled domain text for continued pretraining. ``light``: only emptiness and bad characters.

    Empty lines, lines under ``min_chars`` and repeats are cleanable (dropped and counted with a warning, see
    models.data.corpus_drop_reasons); past ``max_dropped_rate`` of the corpus each stops the run.
    """
    if light:
        return _light_corpus_suite(cfg, name)
    gxe = _gxe()
    cap = _within_rate(cfg.max_dropped_rate)

    def dropped(reason: str):
        return gxe.ExpectColumnValuesToNotBeInSet(column="drop_reason", value_set=[reason], mostly=cap)

    checks = [
        _text_present(gxe),
        Check(
            "text_not_empty",
            "rows",
            dropped("empty"),
            "empty lines have nothing to mask: they are dropped; a corpus mostly empty is a broken export",
            cleanable=True,
        ),
        Check(
            "too_short",
            "rows",
            dropped("too_short"),
            "fragments shorter than min_chars (e.g. 'R .') carry no context: they are dropped",
            cleanable=True,
        ),
        Check(
            "duplicate_rate",
            "rows",
            dropped("repeat"),
            "repeated documents (same text ignoring case and whitespace) are memorised and skew MLM loss: "
            "repeats are dropped, the first kept",
            cleanable=True,
        ),
        _bad_chars_check(cfg),
        *_corpus_length_checks(cfg, gxe),
        Check(
            "pii_rate",
            "rows",
            gxe.ExpectColumnValuesToBeInSet(
                column="has_pii", value_set=[False], mostly=_within_rate(cfg.max_pii_rate)
            ),
            "e-mails, phone numbers, IBANs and card numbers can be memorised and leaked by the encoder",
            show=_pii_example,
        ),
    ]
    return Suite(name, checks)


def _bad_chars_check(cfg: ValidationConfig) -> Check:
    return Check(
        "bad_chars_rate",
        "rows",
        _gxe().ExpectColumnValuesToBeInSet(
            column="has_bad_chars", value_set=[False], mostly=_within_rate(cfg.max_bad_char_rate)
        ),
        "mojibake (Ã©, â€™), U+FFFD or control characters mean a wrong encoding upstream; the model "
        "would learn the garbage as vocabulary",
    )


def _length_checks(cfg: ValidationConfig, frame: str) -> list[Check]:
    gxe = _gxe()
    return [
        Check(
            "text_not_empty",
            frame,
            gxe.ExpectColumnValuesToBeBetween(column="stripped_chars", min_value=1),
            "an empty example gives the classifier a label with no evidence",
        ),
        Check(
            "length_chars",
            frame,
            gxe.ExpectColumnValuesToBeBetween(
                column="stripped_chars",
                min_value=cfg.min_chars,
                max_value=cfg.max_chars,
                mostly=_within_rate(cfg.max_length_outlier_rate),
            ),
            "examples far outside the expected length are usually parsing errors",
        ),
        Check(
            "length_tokens",
            frame,
            gxe.ExpectColumnValuesToBeBetween(
                column="token_count",
                max_value=cfg.max_tokens,
                mostly=_within_rate(cfg.max_length_outlier_rate),
            ),
            "tokens past max_tokens are truncated, so the evidence for the label may be cut off",
        ),
    ]


def _leakage_check(cfg: ValidationConfig, frame: str) -> Check:
    return Check(
        "train_eval_leakage",
        frame,
        _gxe().ExpectColumnValuesToBeInSet(
            column="leaks_across_splits", value_set=[False], mostly=_within_rate(cfg.max_leakage_rate)
        ),
        "a text in both train and eval inflates evaluation scores: the model has seen the answer",
        show=lambda row: f"[{row['split']}] {row['text']}",
    )


def classification_suite(cfg: ValidationConfig, labels: list[str], with_eval: bool) -> Suite:
    """Labelled rows for sequence classification (train and, if given, the eval file)."""
    gxe = _gxe()
    checks = [
        Check(
            "schema",
            "rows",
            gxe.ExpectTableColumnsToMatchSet(column_set=["text", "label"], exact_match=False),
            "fine-tuning reads exactly these two columns",
        ),
        Check(
            "text_is_string",
            "rows",
            gxe.ExpectColumnValuesToBeOfType(column="text", type_="str"),
            "the tokenizer only accepts strings; numbers or lists mean a wrong column mapping",
        ),
        Check(
            "label_is_string",
            "rows",
            gxe.ExpectColumnValuesToBeOfType(column="label", type_="str"),
            "labels are matched by name against the declared set",
        ),
        Check(
            "labels_in_declared_set",
            "rows",
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
            "a label outside recipe.data.labels has no output unit in the classifier head",
            show=lambda row: f"label {row['label']!r}: {row['text']}",
        ),
        Check(
            "conflicting_labels",
            "rows",
            gxe.ExpectColumnValuesToBeInSet(
                column="conflicting_label", value_set=[False], mostly=_within_rate(cfg.max_conflict_rate)
            ),
            "the same text with different labels is contradictory supervision (caps achievable accuracy)",
            show=lambda row: f"[{row['split']}] label {row['label']!r}: {row['text']}",
        ),
        Check(
            "min_examples_per_class",
            "classes",
            gxe.ExpectColumnValuesToBeBetween(column="count", min_value=cfg.min_examples_per_class),
            "a class with too few training examples cannot be learned or measured reliably",
            show=lambda row: f"{row['label']}: {row['count']} examples",
        ),
        Check(
            "class_balance",
            "classes",
            gxe.ExpectColumnValuesToBeBetween(column="imbalance_ratio", max_value=cfg.max_class_imbalance),
            "beyond max_class_imbalance the minority class is ignored by an unweighted loss",
            show=lambda row: (
                f"{row['label']}: {row['count']} examples, largest class {row['imbalance_ratio']:.1f}x"
            ),
        ),
        *_length_checks(cfg, "rows"),
    ]
    if with_eval:
        checks.append(_leakage_check(cfg, "rows"))
    return Suite("classification", checks)


def ner_suite(cfg: ValidationConfig, entity_types: list[str], with_eval: bool) -> Suite:
    """Token-tagged sentences (BIO scheme) for token classification."""
    from models.data import ner_tag_set

    gxe = _gxe()
    checks = [
        Check(
            "sentence_not_empty",
            "sentences",
            gxe.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1),
            "a sentence without tokens gives the tagger nothing to label",
            show=lambda row: f"[{row['split']}] (no tokens)",
        ),
        Check(
            "tokens_tags_same_length",
            "sentences",
            gxe.ExpectColumnPairValuesToBeEqual(column_A="n_tokens", column_B="n_tags"),
            "every token needs exactly one tag, or labels shift onto the wrong words",
            show=lambda row: (
                f"[{row['split']}] {row['n_tokens']} tokens, {row['n_tags']} tags: {row['text']}"
            ),
        ),
        Check(
            "tags_in_declared_set",
            "tags",
            gxe.ExpectColumnValuesToBeInSet(column="tag", value_set=ner_tag_set(list(entity_types))),
            "tags must be O or B-/I- of a declared entity type, or the head has no unit for them (bare B / I "
            "are read as the type when data.labels names one; BIOES / BILOU prefixes are read as IOB2)",
            show=lambda row: f"[{row['split']}] {row['tag']!r} at token {row['position']}",
        ),
        Check(
            "bio_transitions_valid",
            "sentences",
            gxe.ExpectColumnValuesToBeInSet(column="bio_valid", value_set=[True]),
            "an I- tag after O, at sentence start or after another type is a broken entity span (a file in "
            "IOB1, where entities start with I-, is read as IOB2 only when every B- tag follows its own type)",
            show=lambda row: f"[{row['split']}] {row['bio_error']}: {row['text']}",
        ),
        Check(
            "length_chars",
            "sentences",
            gxe.ExpectColumnValuesToBeBetween(column="stripped_chars", max_value=cfg.max_chars),
            "sentences over max_chars are usually several sentences merged by a missing blank line",
        ),
        Check(
            "length_tokens",
            "sentences",
            gxe.ExpectColumnValuesToBeBetween(
                column="token_count",
                max_value=cfg.max_tokens,
                mostly=_within_rate(cfg.max_length_outlier_rate),
            ),
            "subword tokens past max_tokens are truncated, so their entities are never tagged",
        ),
    ]
    if with_eval:
        checks.append(_leakage_check(cfg, "sentences"))
    return Suite("ner", checks)


# Every check name a recipe may give a severity for (``name`` or ``suite.name``).
CHECK_NAMES = {
    "corpus": [
        "text_present",
        "text_not_empty",
        "too_short",
        "bad_chars_rate",
        "length_chars",
        "length_tokens",
        "duplicate_rate",
        "pii_rate",
        "data_readable",
    ],
    "general": ["text_present", "text_not_empty", "bad_chars_rate", "data_readable"],
    "classification": [
        "schema",
        "text_is_string",
        "label_is_string",
        "labels_in_declared_set",
        "conflicting_labels",
        "min_examples_per_class",
        "class_balance",
        "text_not_empty",
        "length_chars",
        "length_tokens",
        "train_eval_leakage",
        "data_readable",
    ],
    "ner": [
        "sentence_not_empty",
        "tokens_tags_same_length",
        "tags_in_declared_set",
        "bio_transitions_valid",
        "length_chars",
        "length_tokens",
        "train_eval_leakage",
        "data_readable",
    ],
    "drift": ["profile_drift"],
}


def severity_for(cfg: ValidationConfig, suite: str, name: str) -> str:
    """``fail`` unless the recipe overrides it as ``suite.name`` (most specific) or ``name``."""
    return cfg.severity.get(f"{suite}.{name}") or cfg.severity.get(name) or "fail"


def unknown_severity_keys(cfg: ValidationConfig) -> list[str]:
    known = {n for names in CHECK_NAMES.values() for n in names}
    known |= {f"{suite}.{n}" for suite, names in CHECK_NAMES.items() for n in names}
    return sorted(key for key in cfg.severity if key not in known)
