"""Run a serving bundle with ONNX Runtime and the `tokenizers` library (no torch, no transformers).

    predictor = OnnxPredictor(bundle_dir)          # CUDA when a CUDA session really works, else CPU
    predictor.classify(["great product"])           # [{"label", "score", "scores": {label: p}}]
    predictor.entities(["Aspirin eases headache"])  # [[{"text", "label", "start", "end", "score"}]]

Only onnxruntime, tokenizers, numpy and the standard library are imported (plus models.registry.bundle, stdlib-only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.hashing import file_sha256
from models.registry.bundle import (
    MANIFEST,
    SERVING_SPEC,
    TOKENIZER_DIR,
    BundlePathError,
    ServingSpec,
    check_bundle_path,
    resolve_in_bundle,
)
from services.runtime import (
    CUDA_PROVIDER_OPTIONS,
    PROVIDER_ENV,
    RuntimeConfigError,
    RuntimeTuning,
    run_with_binding,
)

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_ORT_QUIET = 4  # fatal only: onnxruntime-gpu on a CPU host logs a library error for every CUDA attempt
# Checked before a bundle serves (start-up and every reload): plain, long, odd Unicode and near-empty text.
PROBE_TEXTS = (
    "Aspirin relieved the patient's headache within an hour.",
    "The company reported higher quarterly profit. " * 20,
    "Café naïve — 😀 emoji, e\u0301 combining, \u202eRTL\u202c and 中文 text",
    "x",
)


class BundleError(RuntimeError):
    """The bundle cannot be served; the message names the file and what to do."""


class ChecksumError(BundleError):
    """A bundle file does not match the sha256 recorded in manifest.json."""


class WrongTaskError(ValueError):
    """The model was asked for a task it was not trained for (classification vs NER)."""


def _manifest_entries(manifest: Any) -> dict[str, str]:
    """Accept the shapes a manifest may take: {path: sha}, {"files": {path: sha}} or {"files": [{path, sha256}]}."""
    files = manifest.get("files", manifest) if isinstance(manifest, dict) else manifest
    if isinstance(files, dict):
        return {
            str(path): (entry if isinstance(entry, str) else entry.get("sha256", ""))
            for path, entry in files.items()
            if isinstance(entry, str | dict)
        }
    if isinstance(files, list):
        return {
            str(item["path"]): str(item["sha256"]) for item in files if "path" in item and "sha256" in item
        }
    raise BundleError(f"{MANIFEST} has an unexpected shape; expected a mapping of file path to sha256")


def verify_manifest(bundle_dir: Path, only: list[str] | None = None) -> int:
    """Check the sha256 of the bundle's files against manifest.json (when it exists); return how many matched.

    ``only`` limits the check to these relative paths (the files the service actually loads) when given.
    """
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / MANIFEST
    if not manifest_path.is_file():
        return 0
    try:
        entries = _manifest_entries(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{manifest_path} is not a readable manifest: {exc}") from None
    if only is not None:
        # What is loaded must be covered: a file the manifest does not list would be loaded unchecked.
        uncovered = sorted(set(only) - set(entries))
        if uncovered:
            raise ChecksumError(
                f"{', '.join(uncovered)} in {bundle_dir} is loaded but not listed in {MANIFEST}; "
                "re-register the bundle"
            )
    checked = 0
    for relative, expected in sorted(entries.items()):
        if only is not None and relative not in only:
            continue
        try:
            path = resolve_in_bundle(bundle_dir, relative, f"{MANIFEST} entry")
        except BundlePathError as exc:
            raise ChecksumError(str(exc)) from None
        if not path.is_file():
            raise ChecksumError(f"{relative} is listed in {MANIFEST} but missing from {bundle_dir}")
        actual = file_sha256(path)
        if expected and actual != expected:
            raise ChecksumError(
                f"{relative} in {bundle_dir} does not match {MANIFEST} (sha256 {actual[:12]}… != "
                f"{expected[:12]}…): the bundle was modified or corrupted; re-export or re-download it"
            )
        checked += 1
    return checked


def _nvidia_driver_present() -> bool:
    """Cheap pre-check before trying CUDA (a failed CUDA session costs ~0.3 s and library loading)."""
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()


POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


def pool_embeddings(hidden: np.ndarray, attention_mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from (batch, tokens, dim) token vectors, padding ignored, L2-normalised. The same
    pooling as sentence-transformers' Pooling + Normalize modules (models/export/embedding.py checks it)."""
    mask = attention_mask[..., None].astype(hidden.dtype)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = np.where(mask > 0, hidden, -np.inf).max(axis=1)
    else:
        counts = np.clip(mask.sum(axis=1), 1e-9, None)
        pooled = (hidden * mask).sum(axis=1) / (np.sqrt(counts) if mode == "mean_sqrt_len" else counts)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class OnnxPredictor:
    """One ONNX Runtime session over one variant of a serving bundle."""

    def __init__(
        self, bundle_dir: str | Path, variant: str | None = None, providers: list[str] | None = None
    ):
        import onnxruntime as ort

        self.bundle_dir = Path(bundle_dir)
        self._read_spec(variant)
        # Verify before use, and only what this process may read (a bundle without pytorch/ still serves).
        self._verify_files()
        try:
            self.tuning = RuntimeTuning.from_environment()
        except RuntimeConfigError as exc:
            raise BundleError(str(exc)) from None
        self._options = self.tuning.session_options(ort, _ORT_QUIET if providers is None else 2)
        self._cuda_note = "not tried"
        self.session, self.variant = self._open_session(ort, variant, providers)
        self._load_tokenizer()
        self._input_names = [i.name for i in self.session.get_inputs()]
        self.provider = self.session.get_providers()[0]
        self._open_embedding_session(ort)
        self._open_fallback_session(ort)
        # On CUDA, inputs and outputs go through IOBinding (one copy each way, no per-run staging).
        self.io_binding = self.provider == CUDA
        self.runtime = self.tuning.record(
            provider=self.provider, io_binding=self.io_binding, cuda=self._cuda_note
        )
        logger.info(
            "loaded %s (%s) variant %s on %s, %d threads",
            self.spec.name,
            self.spec.task,
            self.variant,
            self.provider,
            self._options.intra_op_num_threads,
        )

    # ------------------------------------------------------------------ loading

    def _read_spec(self, variant: str | None) -> None:
        """The bundle's serving spec and its embedding entry; BundleError when this is no bundle of ``variant``."""
        if not (self.bundle_dir / SERVING_SPEC).is_file():
            raise BundleError(
                f"{self.bundle_dir} is not a serving bundle ({SERVING_SPEC} is missing); "
                "point DAPT_BUNDLE_DIR at a folder written by `dapt export`"
            )
        try:
            self.spec = ServingSpec.read(self.bundle_dir)
        except BundlePathError as exc:
            raise BundleError(str(exc)) from None
        if variant is not None and variant not in self.spec.variants:
            raise BundleError(
                f"variant {variant!r} is not in this bundle; it has {sorted(self.spec.variants)}"
            )
        embedding = self.spec.extra.get("embedding")
        self.embedding: dict[str, Any] | None = embedding if isinstance(embedding, dict) else None
        if self.embedding is not None:
            self._check_embedding_entry(self.embedding)

    def _verify_files(self) -> None:
        """The manifest checksums of the files this process reads: tokenizer, spec, variants, embedding."""
        verify_manifest(
            self.bundle_dir,
            only=[
                f"{TOKENIZER_DIR}/tokenizer.json",
                SERVING_SPEC,
                *self.spec.variants.values(),
                *([self.embedding["path"]] if self.embedding else []),
            ],
        )

    def _load_tokenizer(self) -> None:
        from tokenizers import Tokenizer

        tokenizer_path = self.bundle_dir / TOKENIZER_DIR / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=self.spec.max_length)
        pad_token = self._pad_token()
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise BundleError(f"pad token {pad_token!r} is not in {tokenizer_path}")
        # Texts are encoded one by one (no padding, whatever tokenizer.json says) and padded per batch to its
        # longest text (:meth:`feeds`), so a batch of short texts is never padded to a fixed length.
        self.tokenizer.no_padding()
        self._pad_id = pad_id

    def _open_embedding_session(self, ort: Any) -> None:
        """The bundle's sentence-embedding model (fp32, no variants), or None when it has none."""
        self.embedding_session = None
        if self.embedding is None:
            return
        # On the provider the classifier got (CUDA only when CUDA really started).
        embedding_path = str(self._bundle_file(self.embedding["path"], "the embedding model"))
        if self.provider == CUDA:
            embedding_providers: list[Any] = [(CUDA, dict(CUDA_PROVIDER_OPTIONS)), CPU]
        else:
            embedding_providers = [CPU]
        self.embedding_session = ort.InferenceSession(
            embedding_path, self._options, providers=embedding_providers
        )
        self._embedding_inputs = [i.name for i in self.embedding_session.get_inputs()]

    def _open_fallback_session(self, ort: Any) -> None:
        """int8 on the CPU for a single-label classifier whose export set ``fp32_fallback_margin``: also the fp32
        session, which answers the texts whose int8 top-two probabilities are closer than the margin."""
        self.fallback_session = None
        self.fallback_margin: float | None = None
        self.fallback_texts = 0
        margin = (self.spec.extra.get("int8") or {}).get("fp32_fallback_margin")
        if (
            self.variant != "int8"
            or self.spec.task != "classification"
            or self.spec.multi_label
            or "fp32" not in self.spec.variants
            or not isinstance(margin, (int, float))
            or margin <= 0
        ):
            return
        self.fallback_session = ort.InferenceSession(
            str(self._onnx_path("fp32")), self._options, providers=[CPU]
        )
        self.fallback_margin = float(margin)

    def _onnx_path(self, variant: str) -> Path:
        try:
            path = resolve_in_bundle(self.bundle_dir, self.spec.variants[variant], f"variant {variant!r}")
        except BundlePathError as exc:
            raise BundleError(str(exc)) from None
        if not path.is_file():
            raise BundleError(
                f"{self.spec.variants[variant]} (variant {variant}) is missing from {self.bundle_dir}"
            )
        return path

    def _open_session(self, ort, variant: str | None, providers: list[str] | None):
        """(session, variant) on CUDA when asked for or available and a CUDA session really starts, else CPU.

        Sets ``self._cuda_note`` to what happened with CUDA (shown in /metadata under ``runtime.cuda``).
        """
        choice = self.tuning.provider_choice
        if providers is not None:
            want_cuda = providers[0] == CUDA
        elif choice == "cpu":
            want_cuda, providers = False, [CPU]
            self._cuda_note = f"not tried: {PROVIDER_ENV}=cpu"
        elif choice == "cuda":
            want_cuda, providers = True, [CUDA, CPU]
        elif CUDA not in ort.get_available_providers():
            want_cuda, providers = False, [CPU]
            self._cuda_note = "not tried: this onnxruntime build has no CUDA provider"
        elif not _nvidia_driver_present():
            want_cuda, providers = False, [CPU]
            self._cuda_note = "not tried: no NVIDIA driver on this host"
        else:
            want_cuda, providers = True, [CUDA, CPU]
        if want_cuda:
            # onnxruntime-gpu lists CUDA even without CUDA libraries: only a session that really got the
            # CUDA provider counts. The failed attempt logs through ORT's default logger, hence the muting.
            gpu_variant = variant or self._servable(self.spec.preferred_gpu_variant)
            cuda_providers = [(CUDA, dict(CUDA_PROVIDER_OPTIONS)) if p == CUDA else p for p in providers]
            ort.set_default_logger_severity(_ORT_QUIET)
            try:
                session = ort.InferenceSession(
                    str(self._onnx_path(gpu_variant)), self._options, providers=cuda_providers
                )
                if session.get_providers()[0] == CUDA:
                    self._cuda_note = "in use"
                    return session, gpu_variant
                self._cuda_note = (
                    "fell back to CPU: the CUDA provider did not start (CUDA libraries or device)"
                )
            except BundleError:
                raise
            except Exception as exc:  # no usable CUDA: fall through to CPU
                self._cuda_note = f"fell back to CPU: {str(exc).splitlines()[0][:200]}"
            finally:
                ort.set_default_logger_severity(2)
            logger.info("CUDA asked for but not usable, serving on CPU (%s)", self._cuda_note)
            if CPU not in providers:
                raise BundleError(
                    f"a CUDA session could not start and CPU was not allowed: {self._cuda_note}"
                )
        # The CPU gets the CPU variant (int8 or fp32), never fp16 picked for a GPU that did not start.
        cpu_variant = variant or self._servable(self.spec.preferred_cpu_variant)
        return ort.InferenceSession(
            str(self._onnx_path(cpu_variant)), self._options, providers=[CPU]
        ), cpu_variant

    def _bundle_file(self, relative: str, what: str) -> Path:
        try:
            path = resolve_in_bundle(self.bundle_dir, relative, what)
        except BundlePathError as exc:
            raise BundleError(str(exc)) from None
        if not path.is_file():
            raise BundleError(f"{relative} ({what}) is missing from {self.bundle_dir}")
        return path

    def _check_embedding_entry(self, entry: dict[str, Any]) -> None:
        try:
            check_bundle_path(entry.get("path"), f"{SERVING_SPEC} embedding path")
        except BundlePathError as exc:
            raise BundleError(str(exc)) from None
        if entry.get("pooling") not in POOLING_MODES:
            raise BundleError(
                f"{SERVING_SPEC} embedding pooling {entry.get('pooling')!r} is not one of {POOLING_MODES}; "
                "re-export the bundle"
            )

    def _servable(self, preferred: str) -> str:
        """The preferred variant if the bundle serves it, else fp32 (the export drops variants failing parity)."""
        return preferred if preferred in self.spec.variants else "fp32"

    def _pad_token(self) -> str:
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = self.bundle_dir / TOKENIZER_DIR / name
            if path.is_file():
                pad = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
                if isinstance(pad, dict):
                    pad = pad.get("content")
                if isinstance(pad, str):
                    return pad
        return "[PAD]"

    # ------------------------------------------------------------------ inference

    def encode(self, texts: list[str]) -> list[Any]:
        """Tokenize without padding (truncated to the bundle's max_length); one ``Encoding`` per text."""
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise TypeError("texts must be a list of strings")
        return self.tokenizer.encode_batch(list(texts))

    @staticmethod
    def truncated(encoding: Any) -> bool:
        """Whether the text had more tokens than max_length (the rest was not seen by the model)."""
        return bool(encoding.overflowing)

    def feeds(self, encodings: list[Any], input_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The model inputs of a batch, right-padded to its longest encoding."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = encoding.attention_mask
            types[row, :length] = encoding.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feeds[name] for name in (input_names or self._input_names)}

    def _encode(self, texts: list[str]):
        encodings = self.encode(texts)
        return encodings, self.feeds(encodings)

    def logits(self, texts: list[str]) -> np.ndarray:
        """Raw logits: (batch, labels) for classification, (batch, tokens, labels) for NER."""
        if not texts:
            return np.zeros((0, len(self.spec.labels)), dtype=np.float32)
        return self.logits_of(self.encode(texts))

    def logits_of(self, encodings: list[Any]) -> np.ndarray:
        logits = self._run(self.session, self.feeds(encodings))[0].astype(np.float32)
        if self.fallback_session is not None and len(logits):
            top_two = np.sort(_softmax(logits), axis=1)[:, -2:]
            unsure = np.flatnonzero(top_two[:, 1] - top_two[:, 0] < self.fallback_margin)
            if unsure.size:
                exact = self.feeds([encodings[i] for i in unsure])
                logits[unsure] = self._run(self.fallback_session, exact)[0].astype(np.float32)
                self.fallback_texts += int(unsure.size)
        return logits

    def _run(self, session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.io_binding:
            return run_with_binding(session, feeds, "cuda")
        return session.run(None, feeds)

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised sentence embeddings, (texts, dimension), pooled as the base model was trained."""
        if self.embedding_session is None or self.embedding is None:
            raise WrongTaskError(
                f"{self.spec.name}'s bundle has no embedding model: re-export it to serve /embed"
            )
        if not texts:
            return np.zeros((0, int(self.embedding.get("dimension") or 0)), dtype=np.float32)
        return self.embed_encoded(self.encode(texts))

    def embed_encoded(self, encodings: list[Any]) -> np.ndarray:
        """Embeddings of already tokenized texts (:meth:`encode`)."""
        assert self.embedding is not None, "embed() checks that the bundle has an embedding model"
        feeds = self.feeds(encodings, self._embedding_inputs)
        hidden = self._run(self.embedding_session, feeds)[0].astype(np.float32)
        return pool_embeddings(hidden, feeds["attention_mask"], self.embedding["pooling"])

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        if self.spec.task != "classification":
            raise WrongTaskError(f"{self.spec.name} is a token-classification (NER) model: use /entities")
        if not texts:
            return []
        return self.classify_encoded(self.encode(texts))

    def classify_encoded(self, encodings: list[Any]) -> list[dict[str, Any]]:
        """Predictions for already tokenized texts (:meth:`encode`), with ``truncated`` per text."""
        logits = self.logits_of(encodings)
        probabilities = _sigmoid(logits) if self.spec.multi_label else _softmax(logits)
        labels = self.spec.labels
        results = []
        for row, encoding in zip(probabilities, encodings, strict=True):
            best = int(row.argmax())
            results.append(
                {
                    "label": labels[best],
                    "score": float(row[best]),
                    "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
                    "truncated": self.truncated(encoding),
                }
            )
        return results

    def entities(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        if self.spec.task != "ner":
            raise WrongTaskError(f"{self.spec.name} is a classification model: use /classify")
        if not texts:
            return []
        return self.entities_encoded(texts, self.encode(texts))

    def entities_encoded(self, texts: list[str], encodings: list[Any]) -> list[list[dict[str, Any]]]:
        """Spans for already tokenized texts (``encodings[i]`` is ``texts[i]`` through :meth:`encode`)."""
        probabilities = _softmax(self.logits_of(encodings))
        return [
            self._spans(text, encoding, probabilities[row])
            for row, (text, encoding) in enumerate(zip(texts, encodings, strict=True))
        ]

    def _spans(self, text: str, encoding, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """BIO tags to character spans. A word's tag is its first word-piece's (how the model was trained);
        the word's later pieces only extend the span's end. Strict IOB2: a span opens at B-X only."""
        labels = self.spec.labels
        spans: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        previous_word = None
        for index, word in enumerate(encoding.word_ids):
            start, end = encoding.offsets[index]
            if word is None or encoding.special_tokens_mask[index] or end <= start:
                continue
            if word == previous_word:
                if current is not None:
                    current["end"] = end
                continue
            previous_word = word
            best = int(probabilities[index].argmax())
            tag, probability = labels[best], float(probabilities[index][best])
            prefix, _, entity_type = tag.partition("-")
            if tag == "O" or not entity_type:
                current = None
                continue
            if prefix == "I":
                if current is not None and current["label"] == entity_type:
                    current["end"] = end
                    current["_probabilities"].append(probability)
                else:
                    # An I-X that continues no X span is not an entity (strict IOB2, as evaluation scores it);
                    # opening a span there cost served entity F1 a point on BC5CDR (benchmarks/README).
                    current = None
                continue
            current = {"label": entity_type, "start": start, "end": end, "_probabilities": [probability]}
            spans.append(current)
        for span in spans:
            scores = span.pop("_probabilities")
            span["text"] = text[span["start"] : span["end"]]
            span["score"] = float(np.mean(scores))
        return [{k: s[k] for k in ("text", "label", "start", "end", "score")} for s in spans]

    def warmup(self) -> None:
        """One tiny inference so the first real request does not pay for lazy kernel set-up."""
        encodings, feeds = self._encode(["warm up"])
        self._run(self.session, feeds)
        if self.embedding_session is not None:
            self.embed_encoded(encodings)

    def self_check(self, texts: list[str] | tuple[str, ...] = PROBE_TEXTS) -> None:
        """Raise BundleError unless the model gives well-formed answers for ``texts`` (run before serving).

        Catches what checksums cannot: a bundle that loads but answers NaN, the wrong number of labels, or
        spans outside the text (e.g. a tokenizer that does not belong to the graph).
        """
        texts = list(texts)
        logits = self.logits(texts)
        if not np.isfinite(logits).all():
            raise BundleError(f"{self.bundle_dir}: the model answers non-finite logits for the probe texts")
        if logits.shape[0] != len(texts) or logits.shape[-1] != len(self.spec.labels):
            raise BundleError(
                f"{self.bundle_dir}: logits of shape {logits.shape} do not match {len(texts)} probe texts and "
                f"{len(self.spec.labels)} labels in {SERVING_SPEC}"
            )
        if self.embedding_session is not None:
            vectors = self.embed(texts)
            norms = np.linalg.norm(vectors, axis=1) if vectors.ndim == 2 else np.zeros(0)
            if (
                vectors.shape[0] != len(texts)
                or not np.isfinite(vectors).all()
                or not np.allclose(norms, 1, atol=1e-3)
            ):
                raise BundleError(
                    f"{self.bundle_dir}: the embedding model answers {vectors.shape} vectors that are not finite "
                    "unit vectors for the probe texts"
                )
        if self.spec.task == "classification":
            for result in self.classify(texts):
                total = sum(result["scores"].values())
                if not 0.0 <= result["score"] <= 1.0 or (not self.spec.multi_label and abs(total - 1) > 1e-3):
                    raise BundleError(
                        f"{self.bundle_dir}: probe probabilities are not a distribution: {result}"
                    )
            return
        for text, spans in zip(texts, self.entities(texts), strict=True):
            for span in spans:
                if (
                    not (0 <= span["start"] < span["end"] <= len(text))
                    or text[span["start"] : span["end"]] != (span["text"])
                ):
                    raise BundleError(f"{self.bundle_dir}: probe span {span} does not point into {text!r}")

    def info(self) -> dict[str, Any]:
        """What this predictor runs (the served name and version are the service's to say)."""
        runtime = dict(self.runtime)
        if self.fallback_margin is not None:
            runtime["int8_fp32_fallback"] = {
                "margin": self.fallback_margin,
                "texts_answered_by_fp32": self.fallback_texts,
            }
        return {
            "name": self.spec.name,
            "version": str(self.spec.extra.get("version", "unversioned")),
            "task": self.spec.task,
            "variant": self.variant,
            "provider": self.provider,
            "labels": list(self.spec.labels),
            "max_length": self.spec.max_length,
            "multi_label": self.spec.multi_label,
            "runtime": runtime,
            "embedding": None
            if self.embedding is None
            else {
                "dimension": self.embedding.get("dimension"),
                "pooling": self.embedding["pooling"],
                "normalized": True,
            },
        }
