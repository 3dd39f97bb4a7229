"""The synthetic sample data in data/sample/ parses with models.data and keeps the properties recipes rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from models.data import read_classification, read_corpus, read_ner

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
LABELS = {"negative", "neutral", "positive"}
ENTITY_TYPES = {"ORG", "MONEY", "PERCENT", "DATE"}
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")
# Personal data must never appear: e-mail, phone (international "+" or 3-3-4), IBAN shape, long digit runs.
PII = {
    "email": re.compile(r"@"),
    "phone": re.compile(r"\+\s?\d|(?<!\d)(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?!\d)"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,}"),
    "digit run": re.compile(r"(?<![\d.,])\d(?:[ -]?\d){8,}"),
}
FINANCE_WORDS = {
    "profit", "profits", "sales", "revenue", "turnover", "eur", "usd", "gbp", "mn", "shares", "share", "stock",
    "market", "dividend", "quarter", "company", "bank", "price", "cost", "costs", "earnings", "investor",
    "million", "billion", "percent", "loss", "financial", "interest", "tax", "debt", "trade", "trading", "euro",
    "dollar", "money", "cash", "credit",
}  # fmt: skip


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return read_corpus(SAMPLE / "corpus.txt")


@pytest.fixture(scope="module")
def general() -> list[str]:
    return read_corpus(SAMPLE / "general.txt")


@pytest.fixture(scope="module")
def sentiment():
    return read_classification(SAMPLE / "sentiment.csv", slice_column="source")


@pytest.fixture(scope="module")
def ner():
    return read_ner(SAMPLE / "ner.conll")


def _assert_clean_lines(lines: list[str], name: str) -> None:
    for number, line in enumerate(lines, start=1):
        assert line.strip(), f"{name}:{number} is empty"
        assert not CONTROL_CHARS.search(line), f"{name}:{number} has a control character"
        for kind, pattern in PII.items():
            assert not pattern.search(line), f"{name}:{number} looks like it holds a {kind}: {line!r}"


def test_corpus_has_enough_unique_clean_lines_of_sane_length(corpus):
    assert len(corpus) >= 1200
    assert len({_normalise(line) for line in corpus}) == len(corpus), "corpus lines must be unique"
    _assert_clean_lines(corpus, "corpus.txt")
    lengths = [len(line) for line in corpus]
    assert min(lengths) >= 20 and max(lengths) <= 400, (min(lengths), max(lengths))
    sentences_per_line = Counter(min(len(re.findall(r"[.!?](?:\s|$)", line)), 4) for line in corpus)
    assert set(sentences_per_line) == {1, 2, 3}, f"documents are 1-3 sentences: {sentences_per_line}"


def test_corpus_is_financial_news(corpus):
    joined = " ".join(corpus)
    for word in ("operating profit", "net sales", "EUR", "USD", "GBP", " mn", " %", "quarter"):
        assert word in joined, f"corpus lacks {word!r}"


def test_general_text_is_unique_everyday_english_without_finance_words(general):
    assert len(general) >= 250
    assert len({_normalise(line) for line in general}) == len(general), "general lines must be unique"
    _assert_clean_lines(general, "general.txt")
    for number, line in enumerate(general, start=1):
        words = {w.lower() for w in re.findall(r"[A-Za-z]+", line)}
        assert not words & FINANCE_WORDS, f"general.txt:{number} has finance words {words & FINANCE_WORDS}"
        assert not re.search(r"\d|%", line), f"general.txt:{number} has figures: {line!r}"


def test_sentiment_rows_labels_and_uniqueness(sentiment):
    assert list(sentiment.columns) == ["text", "label", "slice"]
    assert len(sentiment) >= 900
    assert set(sentiment["label"]) == LABELS
    normalised = sentiment["text"].map(_normalise)
    assert normalised.is_unique, "every sentiment text appears once"
    labels_per_text = sentiment.assign(norm=normalised).groupby("norm")["label"].nunique()
    assert (labels_per_text == 1).all(), "no text may carry two labels"
    _assert_clean_lines(list(sentiment["text"]), "sentiment.csv")


def test_sentiment_class_mix_matches_real_financial_news(sentiment):
    share = sentiment["label"].value_counts(normalize=True)
    assert 0.55 <= share["neutral"] <= 0.60, share.to_dict()
    assert 0.25 <= share["positive"] <= 0.30, share.to_dict()
    assert 0.12 <= share["negative"] <= 0.15, share.to_dict()


def test_sentiment_slices_hold_every_class(sentiment):
    assert set(sentiment["slice"]) == {"newswire", "press_release"}
    for source, rows in sentiment.groupby("slice"):
        assert set(rows["label"]) == LABELS, f"slice {source} lacks a class"
        assert rows["label"].value_counts().min() >= 30, f"slice {source} has too few rows of some class"


def test_sentiment_texts_are_not_copied_from_the_corpus(sentiment, corpus):
    corpus_lower = [line.lower() for line in corpus]
    copied = [t for t in sentiment["text"] if any(t.lower() in line for line in corpus_lower)]
    assert not copied, f"{len(copied)} sentiment texts occur in corpus.txt, e.g. {copied[:2]}"


def test_sentiment_is_not_keyword_separable(sentiment):
    """Direction words alone must not decide the label: the model has to read metric, negation and clauses."""
    up = r"\b(?:rose|increased|grew|climbed|jumped|improved|widened)\b"
    down = r"\b(?:fell|decreased|declined|dropped|slipped|weakened|narrowed|shrank)\b"
    by_label = {label: rows["text"] for label, rows in sentiment.groupby("label")}
    assert by_label["positive"].str.contains(down).sum() >= 30, "positives with falling words (loss narrowed)"
    assert by_label["negative"].str.contains(up).sum() >= 15, "negatives with rising words (costs rose)"
    assert by_label["neutral"].str.contains(r"\d").sum() >= 200, "neutral statements that carry figures"
    assert by_label["neutral"].str.contains(rf"{up}|{down}|\bdeclined to\b").sum() >= 10
    negated = sentiment["text"].str.contains(r"\b(?:does not|not expected|no longer)\b")
    assert set(sentiment.loc[negated, "label"]) >= {"positive", "negative"}

    def word_list_guess(text: str) -> str:
        ups, downs = len(re.findall(up, text)), len(re.findall(down, text))
        return "positive" if ups > downs else "negative" if downs > ups else "neutral"

    accuracy = (sentiment["text"].map(word_list_guess) == sentiment["label"]).mean()
    assert accuracy < 0.8, f"a word-list rule reaches {accuracy:.2f}; the data is too easy"


def test_ner_sentences_are_valid_bio(ner):
    assert len(ner) >= 400
    allowed = {"O"} | {f"{p}-{t}" for p in "BI" for t in ENTITY_TYPES}
    mentions: Counter[str] = Counter()
    for index, (tokens, tags) in enumerate(zip(ner["tokens"], ner["tags"], strict=True)):
        assert len(tokens) == len(tags) > 0
        previous = "O"
        for token, tag in zip(tokens, tags, strict=True):
            assert tag in allowed, f"sentence {index}: unknown tag {tag}"
            assert token and not re.search(r"\s", token), f"sentence {index}: bad token {token!r}"
            if len(token) > 1:
                assert not re.search(r"^[(),]|[(),.;:]$", token), (
                    f"sentence {index}: punctuation glued to {token!r}"
                )
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:], f"sentence {index}: {tag} follows {previous} at {token!r}"
            if tag.startswith("B-"):
                mentions[tag[2:]] += 1
            previous = tag
        assert tokens[-1] == ".", f"sentence {index} does not end with its own '.' token"
    assert all(mentions[t] >= 100 for t in ENTITY_TYPES), mentions


def test_ner_spans_look_like_their_type(ner):
    spans: dict[str, list[list[str]]] = {t: [] for t in ENTITY_TYPES}
    for tokens, tags in zip(ner["tokens"], ner["tags"], strict=True):
        for token, tag in zip(tokens, tags, strict=True):
            if tag.startswith("B-"):
                spans[tag[2:]].append([token])
            elif tag.startswith("I-"):
                spans[tag[2:]][-1].append(token)
    assert all(span[0] in {"EUR", "USD", "GBP"} for span in spans["MONEY"])
    assert all(span[-1] == "%" for span in spans["PERCENT"])
    assert all(span[0] != "the" for span in spans["DATE"])
    assert any(len(span) == 4 and span[1:3] == ["quarter", "of"] for span in spans["DATE"]), (
        "'third quarter of 2007'"
    )


def test_generator_reproduces_the_checked_in_files(tmp_path):
    """The files are exactly what generate.py writes, so anyone can see and change how they were made."""
    result = subprocess.run(
        [sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("corpus.txt", "general.txt", "sentiment.csv", "ner.conll", "README.md"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), (
            f"{name} differs from generate.py"
        )


def test_readme_says_synthetic_and_states_counts(sentiment, corpus, ner):
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    assert "synthetic" in readme.lower() and "generate.py" in readme
    assert f"{len(corpus)} lines" in readme and f"{len(sentiment)} rows" in readme
    assert f"{len(ner)} sentences" in readme
