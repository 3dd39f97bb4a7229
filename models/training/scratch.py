"""Pretraining from scratch: a WordPiece tokenizer trained on the domain text and a small random-init BERT.

The tokenizer is built with `tokenizers` (BERT normaliser and pre-tokeniser, WordPiece model, [CLS] A [SEP] B
[SEP] post-processor) and wrapped in ``PreTrainedTokenizerFast`` with every special token named: the MLM
collator needs ``mask_token`` and ``pad_token`` (see ENVIRONMENT.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import BertConfig, PreTrainedTokenizerFast

    from models.recipe import AdaptConfig

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


class ScratchConfigError(ValueError):
    """A from-scratch model the recipe describes cannot be built; the message says which field to change."""


def train_wordpiece_tokenizer(
    texts: list[str], vocab_size: int, *, lowercase: bool = True, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer trained on ``texts`` (seconds for tens of thousands of lines)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ScratchConfigError("cannot train a tokenizer on an empty corpus: give data.corpus some text")
    specials = list(SPECIAL_TOKENS.values())
    tokenizer = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, **SPECIAL_TOKENS
    )


def scratch_bert_config(tokenizer: PreTrainedTokenizerFast, adapt: AdaptConfig) -> BertConfig:
    """A BertConfig sized by ``adapt.scratch_*`` for this tokenizer (FFN 4× hidden, positions ≥ max_length)."""
    from transformers import BertConfig

    if adapt.scratch_hidden_size % adapt.scratch_heads:
        raise ScratchConfigError(
            f"adapt.scratch_hidden_size ({adapt.scratch_hidden_size}) must be divisible by adapt.scratch_heads "
            f"({adapt.scratch_heads}); e.g. use {adapt.scratch_heads * max(1, adapt.scratch_hidden_size // adapt.scratch_heads)}"
        )
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=adapt.scratch_hidden_size,
        num_hidden_layers=adapt.scratch_layers,
        num_attention_heads=adapt.scratch_heads,
        intermediate_size=4 * adapt.scratch_hidden_size,
        max_position_embeddings=max(128, adapt.max_length),
        pad_token_id=tokenizer.pad_token_id,
    )


def load_or_train_tokenizer(
    texts: list[str], vocab_size: int, directory: Path, *, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Reuse the tokenizer saved in ``directory`` when it was trained on the same texts and vocabulary size (so
    a resumed run keeps its vocabulary); otherwise train one and save it there."""
    import hashlib
    import shutil

    from transformers import AutoTokenizer

    directory = Path(directory)
    digest = hashlib.sha256(
        f"{vocab_size}\n{model_max_length}\n".encode() + "\n".join(texts).encode()
    ).hexdigest()
    stamp = directory / "trained_on.sha256"
    if (directory / "tokenizer.json").is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return AutoTokenizer.from_pretrained(directory)
    shutil.rmtree(directory, ignore_errors=True)
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size, model_max_length=model_max_length)
    tokenizer.save_pretrained(directory)
    stamp.write_text(digest)
    return tokenizer
