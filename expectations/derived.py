"""Derived columns the data contracts judge, computed with pandas before Great Expectations sees the data.

GX does the judging (thresholds, ``mostly`` rates, results, Data Docs); this module only turns raw text
into measurable columns: stripped length, token count, duplicate / bad-character / PII flags, conflicting
labels, train-eval leakage, BIO validity. Everything is vectorised where pandas allows; Python-level work
is limited to unique words (token counting) and the few rows a cheap regex pre-screen flags (PII checksums).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# UTF-8 read as cp1252/latin-1: a lead byte shown as Â/Ã/Ä/Å followed by a continuation byte (U+0080-U+00BF
# or its cp1252 glyph), or the three-byte punctuation prefix "â€" (e.g. "â€™" for ’).
_CP1252_HIGH = "\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
MOJIBAKE_PATTERN = f"â€|[ÂÃÄÅ][\u0080-\u00bf{_CP1252_HIGH}]"
# U+FFFD (a decoder gave up) and control characters other than tab / newline / carriage return.
BROKEN_CHAR_PATTERN = "[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
BAD_CHAR_PATTERN = f"(?:{MOJIBAKE_PATTERN})|{BROKEN_CHAR_PATTERN}"

EMAIL_PATTERN = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# International numbers need a leading "+"; national ones the 3-3-4 shape. Dates and plain counts do not match.
PHONE_PATTERN = (
    r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\d)"
    r"|(?<!\d)(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?!\d)"
)
IBAN_PATTERN = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"
CARD_PATTERN = r"(?<![\d-])(?:\d[ -]?){12,18}\d(?!\d)"
PII_KINDS = {"email": EMAIL_PATTERN, "phone": PHONE_PATTERN, "iban": IBAN_PATTERN, "card": CARD_PATTERN}

LENGTH_BIN_EDGES = (0, 8, 16, 32, 64, 128, 256, 512, 1024)  # fixed, so histograms of two runs compare


def normalise_text(texts: pd.Series) -> pd.Series:
    """Case- and whitespace-insensitive form used for duplicate, conflict and leakage matching."""
    return texts.str.replace(r"\s+", " ", regex=True).str.strip().str.lower()


def has_bad_chars(texts: pd.Series) -> pd.Series:
    return texts.str.contains(BAD_CHAR_PATTERN, regex=True)


def luhn_valid(digits: str) -> bool:
    """Payment-card checksum: a random digit run passes only 1 time in 10."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616 mod-97 check, so product codes shaped like an IBAN are not flagged."""
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def pii_kinds_in(text: str) -> list[str]:
    """The kinds of PII found in one text (checksums confirm IBAN and card candidates)."""
    kinds = []
    if re.search(EMAIL_PATTERN, text):
        kinds.append("email")
    if re.search(PHONE_PATTERN, text):
        kinds.append("phone")
    if any(iban_valid(m.group()) for m in re.finditer(IBAN_PATTERN, text)):
        kinds.append("iban")
    for match in re.finditer(CARD_PATTERN, text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            kinds.append("card")
            break
    return kinds


# Cheap patterns that every real match contains: the full patterns (with look-arounds and checksums) then
# run only on rows that pass one, which keeps a 100k-row scan at a fraction of a second.
PII_SCREENS = {
    "email": "@",
    "phone": r"\+\d|\(\d{3}\)|\d{3}[.-]\d{3}[.-]\d{4}",
    "iban": r"[A-Z]{2}\d{2}",
    "card": r"\d(?:[ -]?\d){12}",
}


def find_pii(texts: pd.Series) -> pd.Series:
    """Comma-joined PII kinds per row ("" when none)."""
    import pandas as pd

    candidates = pd.Series(False, index=texts.index)
    for screen in PII_SCREENS.values():
        candidates |= texts.str.contains(screen, regex=True)
    kinds = pd.Series("", index=texts.index, dtype=object)
    for index in candidates[candidates].index:
        kinds[index] = ",".join(pii_kinds_in(texts[index]))
    return kinds


def mask_pii(text: str) -> str:
    """The text with e-mails, phone numbers, IBANs and card-like runs replaced, so reports do not leak them."""
    for kind, pattern in PII_KINDS.items():
        text = re.sub(pattern, f"[{kind.upper()}]", text)
    return text


@dataclass
class TokenCounts:
    tokens: np.ndarray  # subword tokens per text (whitespace words without a tokenizer)
    words: np.ndarray  # pre-tokenised words per text
    oov_words: np.ndarray  # words split into [UNK] or >= 3 pieces (zeros without a tokenizer)


class TokenCounter:
    """Counts subword tokens with the base model's fast tokenizer, one unique whitespace chunk at a time.

    BERT pre-tokenisation splits on whitespace first, so encoding each distinct chunk once and summing per
    text gives the same counts as encoding whole texts, at the cost of the corpus vocabulary rather than its
    size (about 10x faster on a 2-core machine). Without ``tokenizer.json`` it falls back to whitespace words.
    """

    def __init__(self, tokenizer_file: Path | None = None):
        self.tokenizer = None
        self.source = "whitespace"
        self._cache: dict[str, tuple[int, int, int]] = {}
        if tokenizer_file is not None and Path(tokenizer_file).is_file():
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self.tokenizer = tokenizer
            self.source = str(tokenizer_file)

    @classmethod
    def for_model(cls, model_dir: Path | None) -> TokenCounter:
        return cls(None if model_dir is None else Path(model_dir) / "tokenizer.json")

    @property
    def unit(self) -> str:
        return "tokens" if self.tokenizer is not None else "words"

    def count(self, texts: pd.Series) -> TokenCounts:
        import numpy as np
        import pandas as pd

        size = len(texts)
        split = [text.split() if isinstance(text, str) else [] for text in texts]
        rows = np.repeat(np.arange(size), [len(chunks) for chunks in split])
        codes, uniques = pd.factorize(np.array(list(itertools.chain.from_iterable(split)), dtype=object))
        if self.tokenizer is None:
            words = np.bincount(rows, minlength=size).astype(np.int64)
            return TokenCounts(words, words, np.zeros(size, dtype=np.int64))
        self._measure([chunk for chunk in uniques if chunk not in self._cache])
        measured = np.array([self._cache[chunk] for chunk in uniques], dtype=np.int64).reshape(-1, 3)
        pieces, words, oov = measured[:, 0], measured[:, 1], measured[:, 2]

        def per_text(values: np.ndarray) -> np.ndarray:
            return np.bincount(rows, weights=values[codes], minlength=size).astype(np.int64)

        return TokenCounts(per_text(pieces), per_text(words), per_text(oov))

    def _measure(self, chunks: list[str]) -> None:
        """Cache (subword pieces, words, OOV words) per whitespace chunk; later calls reuse them."""
        tokenizer = self.tokenizer
        assert tokenizer is not None  # only called with a tokenizer
        unk_id = tokenizer.token_to_id("[UNK]")
        for chunk, encoding in zip(
            chunks, tokenizer.encode_batch(chunks, add_special_tokens=False), strict=True
        ):
            per_word: dict[int | None, int] = {}
            for word_id, token_id in zip(encoding.word_ids, encoding.ids, strict=True):
                per_word[word_id] = per_word.get(word_id, 0) + (3 if token_id == unk_id else 1)
            self._cache[chunk] = (
                len(encoding.ids),
                len(per_word),
                sum(1 for n in per_word.values() if n >= 3),
            )


def corpus_frame(
    texts: list[str], counter: TokenCounter | None, light: bool = False, min_chars: int = 1
) -> pd.DataFrame:
    """One row per document: text, row number and the columns the corpus suite asserts on.

    ``drop_reason`` says why cleaning drops the row ("" when kept; see models.data.corpus_drop_reasons).
    ``light`` (the general-English reference) computes only emptiness and bad characters.
    """
    import pandas as pd

    frame = pd.DataFrame({"row": range(1, len(texts) + 1), "text": pd.Series(texts, dtype=object)})
    text = frame["text"].fillna("").astype(str)
    frame["stripped_chars"] = text.str.strip().str.len()
    frame["has_bad_chars"] = has_bad_chars(text)
    if light:
        return frame
    from models.data import corpus_drop_reasons

    frame["drop_reason"] = corpus_drop_reasons(list(text), min_chars)
    frame["pii"] = find_pii(text)
    frame["has_pii"] = frame["pii"] != ""
    if counter is not None:
        frame["token_count"] = counter.count(text).tokens
    return frame


def labelled_frames(
    train: pd.DataFrame, evaluation: pd.DataFrame | None, labels: list[str], counter: TokenCounter | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Classification rows (train and eval stacked, ``split`` tells which) and one row per class.

    Row columns: conflicting_label (same normalised text, different labels anywhere in the data),
    leaks_across_splits (the text is in the other split too), lengths. Class columns: train count and
    imbalance ratio (largest class / this class).
    """
    import numpy as np
    import pandas as pd

    parts = [train.assign(split="train", row=range(1, len(train) + 1))]
    if evaluation is not None:
        parts.append(evaluation.assign(split="eval", row=range(1, len(evaluation) + 1)))
    rows = pd.concat(parts, ignore_index=True)
    # object dtype: GX then checks each value's Python type (it cannot match pandas 3's "str" dtype by name)
    rows[["text", "label"]] = rows[["text", "label"]].astype(object)
    text = rows["text"].fillna("").astype(str)
    rows["stripped_chars"] = text.str.strip().str.len()
    normalised = normalise_text(text)
    non_empty = normalised != ""
    label_counts = rows.assign(_norm=normalised)[non_empty].groupby("_norm")["label"].nunique()
    rows["conflicting_label"] = normalised.map(label_counts).fillna(1).gt(1).to_numpy() & non_empty.to_numpy()
    rows["leaks_across_splits"] = _leaks(normalised, rows["split"], non_empty)
    if counter is not None:
        rows["token_count"] = counter.count(text).tokens

    train_counts = rows.loc[rows["split"] == "train", "label"].value_counts()
    declared = list(dict.fromkeys(labels))
    counts = [int(train_counts.get(label, 0)) for label in declared]
    largest = max(counts, default=0)
    classes = pd.DataFrame({"label": declared, "count": counts})
    # A class with no rows is infinitely outnumbered; min_examples_per_class names it too.
    classes["imbalance_ratio"] = [largest / c if c else np.inf for c in counts]
    return rows, classes


def _leaks(normalised: pd.Series, split: pd.Series, non_empty: pd.Series) -> pd.Series:
    in_train = set(normalised[(split == "train") & non_empty])
    in_eval = set(normalised[(split == "eval") & non_empty])
    shared = in_train & in_eval
    return normalised.isin(shared) & non_empty


def bio_error(tags: list[str]) -> str:
    """Why a tag sequence is not valid BIO ("" when it is): an I- tag must continue an entity of its type."""
    previous = "O"
    for position, tag in enumerate(tags):
        if tag.startswith("I-"):
            kind = tag[2:]
            if position == 0:
                return f"{tag} at sentence start (token 1)"
            if previous == "O":
                return f"{tag} after O (token {position + 1})"
            if previous[2:] != kind:
                return f"{tag} after {previous} (token {position + 1})"
        previous = tag if tag.startswith(("B-", "I-")) else "O"
    return ""


def ner_frames(
    train: pd.DataFrame, evaluation: pd.DataFrame | None, counter: TokenCounter | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """NER sentences (train and eval stacked) and one row per tag (sentence row, position, tag)."""
    import pandas as pd

    parts = [train.assign(split="train", row=range(1, len(train) + 1))]
    if evaluation is not None:
        parts.append(evaluation.assign(split="eval", row=range(1, len(evaluation) + 1)))
    sentences = pd.concat(parts, ignore_index=True)
    sentences["n_tokens"] = sentences["tokens"].map(len)
    sentences["n_tags"] = sentences["tags"].map(len)
    sentences["bio_error"] = sentences["tags"].map(bio_error)
    sentences["bio_valid"] = sentences["bio_error"] == ""
    text = sentences["tokens"].map(" ".join)
    sentences["text"] = text
    sentences["stripped_chars"] = text.str.strip().str.len()
    normalised = normalise_text(text)
    sentences["leaks_across_splits"] = _leaks(normalised, sentences["split"], normalised != "")
    if counter is not None:
        sentences["token_count"] = counter.count(text).tokens

    exploded = sentences[["split", "row", "tags"]].explode("tags").dropna(subset=["tags"])
    exploded["position"] = exploded.groupby(level=0).cumcount() + 1
    tags = exploded.rename(columns={"tags": "tag"}).reset_index(drop=True)
    return sentences.drop(columns=["tokens", "tags"]), tags
