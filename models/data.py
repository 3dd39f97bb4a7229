"""Reading the recipe's data files into plain Python / pandas, splitting them, fingerprinting them.

Formats: corpus .txt (one document per line) / .csv / .jsonl / .parquet; classification .csv / .jsonl /
.parquet; NER CoNLL (``token TAG`` per line, blank line between sentences; also as a header-less .tsv) or .jsonl
with token and tag lists. NER tags are read into IOB2 with the recipe's entity types (``read_ner_tags``).
Errors are DataError with a message that names the file and what to fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.hashing import file_sha256

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import Recipe


class DataError(ValueError):
    """A data file that cannot be read as the recipe says; the message names the file and the fix."""


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); re-encode it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}` for Latin-1 files"
        ) from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as {suffix[1:].upper()}: {exc}") from None
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _require_columns(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
            "Set the column names in the recipe's data section (text_column, label_column, ...)."
        )


def read_corpus(path: Path, text_column: str = "text") -> list[str]:
    """Documents of an unlabelled corpus, in file order (empty lines kept: validation judges them)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file not found: {path}")
    if path.suffix.lower() in (".txt", ".text", ""):
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc}); re-encode the file as UTF-8") from None
    df = _read_table(path)
    _require_columns(df, path, [text_column])
    return ["" if v is None else str(v) for v in df[text_column].tolist()]


DROP_EMPTY, DROP_SHORT, DROP_REPEAT = "empty", "too_short", "repeat"
_SPACES = re.compile(r"\s+")


def corpus_drop_reasons(lines: list[str], min_chars: int) -> list[str]:
    """Why each corpus line is dropped before adaptation ("" when kept): empty, shorter than ``min_chars``
    once stripped (fragments such as "R ." carry no context), or a repeat of an earlier kept line (same text
    ignoring case and whitespace: it would be memorised). Validation counts these; adaptation skips them."""
    reasons, seen = [], set()
    for line in lines:
        key = _SPACES.sub(" ", "" if line is None else str(line)).strip().lower()
        if not key:
            reasons.append(DROP_EMPTY)
        elif len(key) < min_chars:
            reasons.append(DROP_SHORT)
        elif key in seen:
            reasons.append(DROP_REPEAT)
        else:
            seen.add(key)
            reasons.append("")
    return reasons


@dataclass(frozen=True)
class CorpusCleaning:
    """What cleaning the corpus dropped (counts of lines)."""

    rows: int
    kept: int
    empty: int
    too_short: int
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        dropped = self.rows - self.kept
        return (
            f"corpus: kept {self.kept} of {self.rows} lines; dropped {dropped} "
            f"({self.empty} empty, {self.too_short} too short, {self.repeats} repeats)"
        )


def clean_corpus(lines: list[str], min_chars: int) -> tuple[list[str], CorpusCleaning]:
    """The lines adaptation trains on and the counts of what was dropped (see corpus_drop_reasons)."""
    reasons = corpus_drop_reasons(lines, min_chars)
    kept = [line for line, reason in zip(lines, reasons, strict=True) if not reason]
    return kept, CorpusCleaning(
        rows=len(lines),
        kept=len(kept),
        empty=reasons.count(DROP_EMPTY),
        too_short=reasons.count(DROP_SHORT),
        repeats=reasons.count(DROP_REPEAT),
    )


def read_classification(
    path: Path, text_column: str = "text", label_column: str = "label", slice_column: str | None = None
) -> pd.DataFrame:
    """Labelled rows as a DataFrame with columns ``text``, ``label`` (str) and, if configured, ``slice``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled data file not found: {path}")
    df = _read_table(path)
    wanted = [text_column, label_column] + ([slice_column] if slice_column else [])
    _require_columns(df, path, wanted)
    out = df[wanted].copy()
    out.columns = ["text", "label"] + (["slice"] if slice_column else [])
    out["text"] = out["text"].map(lambda v: "" if v is None else str(v))
    out["label"] = out["label"].map(lambda v: "" if v is None else str(v))
    return out.reset_index(drop=True)


def _read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("-DOCSTART-"):
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        parts = stripped.split()
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected 'TOKEN TAG', got {stripped!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def _is_conll_layout(path: Path, tokens_column: str, tags_column: str) -> bool:
    """A .tsv whose first line is not a header naming both columns: CoNLL lines (``token<TAB>TAG``), as
    BioBERT-style biomedical NER sets ship (train.tsv / devel.tsv / test.tsv)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                header = [cell.strip() for cell in line.rstrip("\n").split("\t")]
                return not (tokens_column in header and tags_column in header)
    return True


def read_ner(path: Path, tokens_column: str = "tokens", tags_column: str = "tags") -> pd.DataFrame:
    """NER sentences as a DataFrame with list columns ``tokens`` and ``tags`` (tags as the file has them)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"NER data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".conll", ".txt", ".bio", ".iob") or (
        suffix == ".tsv" and _is_conll_layout(path, tokens_column, tags_column)
    ):
        rows = _read_conll(path)
        return pd.DataFrame({"tokens": [r[0] for r in rows], "tags": [r[1] for r in rows]})
    df = _read_table(path)
    _require_columns(df, path, [tokens_column, tags_column])
    out = df[[tokens_column, tags_column]].copy()
    out.columns = ["tokens", "tags"]
    for column in ("tokens", "tags"):
        bad = [
            i
            for i, v in enumerate(out[column])
            if not isinstance(v, (list, tuple)) and not hasattr(v, "tolist")
        ]
        if bad:
            raise DataError(f"{path}: column {column!r} must hold lists of strings (rows {bad[:5]} do not)")
        out[column] = out[column].map(lambda v: [str(x) for x in (v.tolist() if hasattr(v, "tolist") else v)])
    return out.reset_index(drop=True)


# BIOES / BILOU tags that IOB2 spells differently: a one-word entity (S-, U-) begins one, a last word (E-, L-)
# continues one.
_IOB2_PREFIX = {"B": "B", "I": "I", "S": "B", "U": "B", "E": "I", "L": "I"}


@dataclass(frozen=True)
class TagReading:
    """What reading one NER file's tags into IOB2 rewrote (counts of tags)."""

    tags: int
    untyped: int = 0  # bare B / I (or S / E / U / L) given the recipe's only entity type
    rewritten: int = 0  # S- / E- / U- / L- (BIOES, BILOU) written as B- / I-
    iob1_starts: int = 0  # in an IOB1 file, the I-X that start an entity, written as B-X

    @property
    def changed(self) -> bool:
        return bool(self.untyped or self.rewritten or self.iob1_starts)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self, entity_types: list[str]) -> str:
        parts = []
        if self.untyped:
            parts.append(f"{self.untyped} bare B/I tags read as {entity_types[0]}")
        if self.rewritten:
            parts.append(f"{self.rewritten} BIOES/BILOU tags (S-, E-, U-, L-) written as B-/I-")
        if self.iob1_starts:
            parts.append(f"{self.iob1_starts} IOB1 entity starts (I-X) written as B-X")
        return f"{', '.join(parts)} (of {self.tags} tags)"


def _continues(previous: str, tag: str) -> bool:
    """Whether ``tag`` (B-X or I-X) follows a tag of the same entity type."""
    return previous[:2] in ("B-", "I-") and previous[2:] == tag[2:]


def _is_iob1(tag_lists: list[list[str]]) -> bool:
    """IOB1 (CoNLL-2003's original scheme) starts an entity with I-X and uses B-X only between two adjacent X
    entities. A file is read as IOB1 when some I-X starts an entity and every B-X follows an X tag; in an IOB2
    file B-X follows O, so a few broken spans there are left for validation to report."""
    entity_starts_with_i = False
    for tags in tag_lists:
        previous = "O"
        for tag in tags:
            if tag.startswith("B-") and not _continues(previous, tag):
                return False
            if tag.startswith("I-") and not _continues(previous, tag):
                entity_starts_with_i = True
            previous = tag
    return entity_starts_with_i


def _iob1_to_iob2(tag_lists: list[list[str]]) -> tuple[list[list[str]], int]:
    result, starts = [], 0
    for tags in tag_lists:
        read, previous = [], "O"
        for tag in tags:
            if tag.startswith("I-") and not _continues(previous, tag):
                tag = "B-" + tag[2:]
                starts += 1
            read.append(tag)
            previous = tag
        result.append(read)
    return result, starts


def read_ner_tags(tag_lists: list[list[str]], entity_types: list[str]) -> tuple[list[list[str]], TagReading]:
    """Tags in the IOB2 scheme the model trains on. Only unambiguous readings are made: a bare ``B``/``I``
    takes the entity type when the recipe declares exactly one, BIOES/BILOU prefixes of a declared type
    become B-/I-, and an IOB1 file's entity starts become B-. Anything else is left for validation to report."""
    declared = set(entity_types)
    untyped = rewritten = total = 0
    result = []
    for tags in tag_lists:
        read = []
        for tag in tags:
            total += 1
            prefix, dash, kind = tag.partition("-")
            if not dash and prefix in _IOB2_PREFIX and len(entity_types) == 1:
                kind, dash = entity_types[0], "-"
                untyped += 1
            if dash and kind in declared and prefix in _IOB2_PREFIX:
                rewritten += prefix != _IOB2_PREFIX[prefix]
                tag = f"{_IOB2_PREFIX[prefix]}-{kind}"
            read.append(tag)
        result.append(read)
    iob1_starts = 0
    if _is_iob1(result):
        result, iob1_starts = _iob1_to_iob2(result)
    return result, TagReading(tags=total, untyped=untyped, rewritten=rewritten, iob1_starts=iob1_starts)


def read_ner_labelled(path: Path, data) -> tuple[pd.DataFrame, TagReading]:
    """A recipe's NER file (``data`` is its data section) with its tags read into IOB2, and what that rewrote."""
    frame = read_ner(path, data.tokens_column, data.tags_column)
    tags, reading = read_ner_tags(list(frame["tags"]), list(data.labels))
    frame["tags"] = tags
    return frame, reading


def ner_text(tokens: list[str]) -> str:
    """The sentence text of a token list (tokens joined by single spaces, as the service receives it)."""
    return " ".join(tokens)


def stratified_split(df: pd.DataFrame, fraction: float, seed: int, column: str | None = "label"):
    """Split rows into (train, eval) with ``fraction`` in eval, stratified by ``column`` when every class can be."""
    from sklearn.model_selection import train_test_split

    stratify = None
    if column is not None and column in df.columns:
        counts = df[column].value_counts()
        held = math.ceil(fraction * len(df))
        # every class needs two rows and a place on each side; tiny sets are split at random instead
        if len(counts) > 1 and counts.min() >= 2 and min(held, len(df) - held) >= len(counts):
            stratify = df[column]
    train, evaluation = train_test_split(df, test_size=fraction, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


@dataclass(frozen=True)
class TaskData:
    train: pd.DataFrame
    eval: pd.DataFrame
    eval_was_split: bool  # True when eval was carved out of train (no eval file in the recipe)


def load_task_data(recipe: Recipe) -> TaskData:
    """The labelled train and evaluation sets the recipe names (a stratified split when no eval file)."""
    data = recipe.data
    if recipe.task == "ner":
        train, _ = read_ner_labelled(data.train, data)
        if data.eval is not None:
            return TaskData(train, read_ner_labelled(data.eval, data)[0], False)
        tr, ev = stratified_split(train, data.eval_fraction, recipe.seed, column=None)
        return TaskData(tr, ev, True)
    train = read_classification(data.train, data.text_column, data.label_column, data.slice_column)
    # A repeated (text, label) row adds no evidence, and split apart it would put an eval answer in train.
    train = train.drop_duplicates(subset=["text", "label"]).reset_index(drop=True)
    if data.eval is not None:
        evaluation = read_classification(data.eval, data.text_column, data.label_column, data.slice_column)
        return TaskData(train, evaluation, False)
    tr, ev = stratified_split(train, data.eval_fraction, recipe.seed)
    return TaskData(tr, ev, True)


def task_texts(recipe: Recipe, task_data: TaskData) -> list[str]:
    """The task's own training texts (for task-adaptive pretraining), never the evaluation split."""
    if recipe.task == "ner":
        return [ner_text(t) for t in task_data.train["tokens"]]
    return list(task_data.train["text"])


def ner_tag_set(entity_types: list[str]) -> list[str]:
    """The BIO tags in logit order: ``O`` then ``B-T``, ``I-T`` for each entity type, in recipe order."""
    tags = ["O"]
    for entity_type in entity_types:
        tags += [f"B-{entity_type}", f"I-{entity_type}"]
    return tags


def data_fingerprint(recipe: Recipe) -> dict:
    """Content hash of every data file plus row counts: same data, same fingerprint (used for caching too)."""
    files = {}
    for key in ("corpus", "general", "train", "eval"):
        path = getattr(recipe.data, key)
        if path is not None:
            path = Path(path)
            files[key] = {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size}
    combined = hashlib.sha256(json.dumps({k: v["sha256"] for k, v in files.items()}, sort_keys=True).encode())
    return {"sha256": combined.hexdigest(), "files": files}
