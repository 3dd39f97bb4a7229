"""The prediction log: opt-in, sampled, size-bounded, rotating JSON lines under DAPT_HOME (one folder per model).

    DAPT_PREDICTION_LOG=hash dapt serve --name finsent      # or: dapt serve --log-predictions hash

Settings (models/settings.py): ``DAPT_PREDICTION_LOG`` ``off`` (default) | ``hash`` (the text's sha256 only) |
``text`` (the text itself, and entity span texts); ``DAPT_PREDICTION_LOG_SAMPLE`` share of texts logged (1.0);
``DAPT_PREDICTION_LOG_MAX_MB`` size of one file before it rotates (16); ``DAPT_PREDICTION_LOG_FILES`` files
kept per model, the one being written included (5), so a model's log never exceeds FILES × MAX_MB;
``DAPT_PREDICTION_LOG_DIR`` (DAPT_HOME/predictions). The record layout is in models/monitoring.py.

Privacy: ``hash`` keeps no text, but a sha256 of a short or guessable text can be found by hashing guesses;
use it to count repeats and join with your own logs, not as anonymisation. ``text`` stores what users sent.

Writing happens in the observer thread (services/drift.py), never on the answering path: records reach it
through a bounded queue, and when the queue is full or the disk refuses a write the records are dropped and
counted (``dapt_monitor_dropped_total{reason}``), the answer is unaffected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from models.monitoring import LOG_FILE, ROTATED_PREFIX, TextStats, log_folder
from models.settings import (
    PREDICTION_LOG_ENV,
    PREDICTION_LOG_FILES_ENV,
    PREDICTION_LOG_MAX_MB_ENV,
    PREDICTION_LOG_SAMPLE_ENV,
    env_number,
    env_text,
    prediction_log_dir,
)

logger = logging.getLogger("dapt.service")

MODES = ("off", "hash", "text")
DEFAULT_MAX_MB = 16.0
DEFAULT_FILES = 5


def log_mode() -> str:
    mode = env_text(PREDICTION_LOG_ENV, "off").strip().lower()
    if mode not in MODES:
        raise RuntimeError(
            f"{PREDICTION_LOG_ENV}={mode!r} is not a prediction log mode: use off, hash (the text's sha256 "
            "only) or text (the text itself)"
        )
    return mode


class PredictionLog:
    """Appends sampled records of one process to ``<root>/<model>/predictions.jsonl``, rotating by size.

    Not thread-safe: one writer thread owns it (services/drift.py's Observer).
    """

    def __init__(
        self,
        root: Path,
        mode: str = "hash",
        sample: float = 1.0,
        max_bytes: int = int(DEFAULT_MAX_MB * 1024 * 1024),
        max_files: int = DEFAULT_FILES,
        rng: random.Random | None = None,
    ) -> None:
        if mode not in ("hash", "text"):
            raise ValueError(f"mode must be hash or text, got {mode!r}")
        self.root = Path(root)
        self.mode = mode
        self.sample = sample
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._rng = rng or random.Random()
        self._handles: dict[str, IO[str]] = {}
        self.written = 0
        self.rotations = 0

    @classmethod
    def from_environment(cls) -> PredictionLog | None:
        """The configured log, or None when ``DAPT_PREDICTION_LOG`` is off (the default)."""
        mode = log_mode()
        if mode == "off":
            return None
        sample = env_number(
            PREDICTION_LOG_SAMPLE_ENV,
            1.0,
            kind=float,
            valid=lambda n: 0 < n <= 1,
            requirement="a share of texts to log, above 0 and at most 1 (e.g. 0.1)",
        )
        max_mb = env_number(
            PREDICTION_LOG_MAX_MB_ENV,
            DEFAULT_MAX_MB,
            kind=float,
            valid=lambda n: n > 0,
            requirement="a file size in MiB above 0 (e.g. 16)",
        )
        files = env_number(
            PREDICTION_LOG_FILES_ENV,
            DEFAULT_FILES,
            kind=int,
            valid=lambda n: n >= 1,
            requirement="a whole number of files to keep per model, at least 1",
        )
        return cls(prediction_log_dir(), mode, sample, max(int(max_mb * 1024 * 1024), 1), files)

    # ------------------------------------------------------------------ records

    def records(
        self,
        *,
        name: str,
        version: str,
        task: str,
        texts: list[str],
        stats: list[TextStats],
        answers: list[Any],
        latency_ms: float,
        at: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The sampled records of one request (one per text kept by the sample)."""
        stamp = (at or datetime.now(timezone.utc)).isoformat(timespec="milliseconds")
        out = []
        for text, (tokens, words, oov), answer in zip(texts, stats, answers, strict=True):
            if self.sample < 1.0 and self._rng.random() >= self.sample:
                continue
            record: dict[str, Any] = {
                "time": stamp,
                "model": name,
                "version": version,
                "task": task,
                "latency_ms": round(latency_ms, 3),
            }
            if task == "ner":
                spans, _ = answer
                record["entities"] = [
                    {k: span[k] for k in ("label", "start", "end", "score")}
                    | ({"text": span["text"]} if self.mode == "text" else {})
                    for span in spans
                ]
            else:
                record["label"] = answer["label"]
                record["score"] = round(float(answer["score"]), 6)
            record |= {"tokens": tokens, "words": words, "oov_words": oov}
            if self.mode == "text":
                record["text"] = text
            else:
                record["text_sha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            out.append(record)
        return out

    # ------------------------------------------------------------------ files

    def write(self, name: str, records: list[dict[str, Any]]) -> int:
        """Append the records (whole lines, flushed) and rotate when the file is full; OSError propagates."""
        if not records:
            return 0
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        size = len(data.encode("utf-8", "surrogatepass"))
        handle = self._handle(name)
        if handle.tell() > 0 and handle.tell() + size > self.max_bytes:
            self._rotate(name)
            handle = self._handle(name)
        handle.write(data)
        handle.flush()
        self.written += len(records)
        return len(records)

    def _handle(self, name: str) -> IO[str]:
        handle = self._handles.get(name)
        if handle is None or handle.closed:
            folder = log_folder(self.root, name)
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / LOG_FILE, "a", encoding="utf-8", errors="surrogatepass")  # noqa: SIM115
            self._handles[name] = handle
        return handle

    def _rotate(self, name: str) -> None:
        folder = log_folder(self.root, name)
        self._handles.pop(name).close()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        (folder / LOG_FILE).rename(folder / f"{ROTATED_PREFIX}{stamp}.jsonl")
        self.rotations += 1
        rotated = sorted(folder.glob(f"{ROTATED_PREFIX}*.jsonl"))
        for old in rotated[: max(len(rotated) - (self.max_files - 1), 0)]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def status(self, operator: bool = False) -> dict[str, Any]:
        document: dict[str, Any] = {
            "mode": self.mode,
            "sample": self.sample,
            "max_file_bytes": self.max_bytes,
            "max_files": self.max_files,
            "written": self.written,
            "rotations": self.rotations,
        }
        if operator:
            document["dir"] = str(self.root)
        return document
