"""Plain Hugging Face fine-tunes, written the way a user would write them: the baseline dapt must beat.

No dapt code on purpose: the Trainer's defaults, the settings issue 13 quotes for classification (lr 8e-5,
batch 32, 4 epochs, max_length 96, no class weights) and the transformers token-classification example's for
NER (lr 5e-5, batch 16, 3 epochs, max_length 128, label on the first word-piece). Same base model, same split.
"""

from __future__ import annotations

import time
from pathlib import Path

CLASSIFICATION = {"learning_rate": 8e-5, "batch_size": 32, "epochs": 4, "max_length": 96}
NER = {"learning_rate": 5e-5, "batch_size": 16, "epochs": 3, "max_length": 128}


def _trainer(model, rows, tokenizer, collator, settings: dict, out: Path, seed: int):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        learning_rate=settings["learning_rate"],
        per_device_train_batch_size=settings["batch_size"],
        num_train_epochs=settings["epochs"],
        save_strategy="no",
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        logging_steps=100,
    )
    return Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)


def classification(
    base: Path, train: list[tuple[str, str]], test: list[str], labels: list[str], out: Path, seed: int = 42
) -> tuple[list[str], float]:
    """Predicted labels for ``test`` and training seconds."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))
    encoded = tokenizer([t for t, _ in train], truncation=True, max_length=CLASSIFICATION["max_length"])
    rows = [
        {"input_ids": ids, "attention_mask": mask, "labels": labels.index(label)}
        for ids, mask, (_, label) in zip(encoded["input_ids"], encoded["attention_mask"], train, strict=True)
    ]
    trainer = _trainer(model, rows, tokenizer, DataCollatorWithPadding(tokenizer), CLASSIFICATION, out, seed)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    test_encoded = tokenizer(test, truncation=True, max_length=CLASSIFICATION["max_length"])
    test_rows = [
        {"input_ids": i, "attention_mask": m}
        for i, m in zip(test_encoded["input_ids"], test_encoded["attention_mask"], strict=True)
    ]
    logits = trainer.predict(test_rows).predictions
    return [labels[i] for i in logits.argmax(-1)], seconds


def ner(
    base: Path,
    train: list[tuple[list[str], list[str]]],
    test: list[list[str]],
    tags: list[str],
    out: Path,
    seed: int = 42,
) -> tuple[list[list[str]], float]:
    """Predicted BIO tags per test word (words cut by max_length get O) and training seconds."""
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
    )

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForTokenClassification.from_pretrained(base, num_labels=len(tags))
    encoded = tokenizer(
        [w for w, _ in train], is_split_into_words=True, truncation=True, max_length=NER["max_length"]
    )
    rows = []
    for index, (_, word_tags) in enumerate(train):
        previous, aligned = None, []
        for word in encoded.word_ids(index):
            aligned.append(-100 if word is None or word == previous else tags.index(word_tags[word]))
            previous = word
        rows.append(
            {
                "input_ids": encoded["input_ids"][index],
                "attention_mask": encoded["attention_mask"][index],
                "labels": aligned,
            }
        )
    trainer = _trainer(model, rows, tokenizer, DataCollatorForTokenClassification(tokenizer), NER, out, seed)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    test_encoded = tokenizer(test, is_split_into_words=True, truncation=True, max_length=NER["max_length"])
    test_rows = [
        {"input_ids": i, "attention_mask": m}
        for i, m in zip(test_encoded["input_ids"], test_encoded["attention_mask"], strict=True)
    ]
    logits = trainer.predict(test_rows).predictions
    predicted = []
    for index, words in enumerate(test):
        guess = ["O"] * len(words)
        previous = None
        for position, word in enumerate(test_encoded.word_ids(index)):
            if word is not None and word != previous:
                guess[word] = tags[int(logits[index][position].argmax())]
            previous = word
        predicted.append(guess)
    return predicted, seconds
