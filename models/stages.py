"""One function per training stage that reads the recipe's data itself.

The retrain flow's tasks (flows/retrain.py) and the single-stage commands (``dapt adapt|finetune|evaluate|
export RECIPE``) both call these, so a stage run alone does exactly what it does inside the flow.

The stages that train with the Trainer are ``collective``: in a launch of several processes (torchrun /
accelerate launch) rank 0 announces each call and the other ranks run it with it, data-parallel
(models/distributed.py). Evaluation and export run in rank 0 alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from models.distributed import collective
from models.progress import staged

if TYPE_CHECKING:
    from models.evaluation.adaptation_gain import AdaptationGain
    from models.evaluation.evaluate import EvalResult
    from models.export.onnx import ExportResult
    from models.recipe import Recipe
    from models.training.adapt import AdaptResult
    from models.training.finetune import FinetuneResult

Progress = Callable[[str], None]


class StageInputError(ValueError):
    """A stage was pointed at something it cannot use (a folder that is not a model, ...)."""


@collective
@staged("adapt")
def adapt_stage(recipe: Recipe, out_dir: Path, progress: Progress | None = None) -> AdaptResult:
    """Domain/task-adaptive pretraining of the recipe's base encoder; the encoder lands in ``out_dir/encoder``."""
    from models.data import clean_corpus, load_task_data, read_corpus, task_texts
    from models.training.adapt import adapt_encoder

    # The same cleaning validation counted: empty and too-short lines and repeats are not trained on.
    corpus, cleaning = clean_corpus(
        read_corpus(recipe.data.corpus, recipe.data.corpus_text_column), recipe.validation.min_chars
    )
    if progress is not None:
        progress(cleaning.summary())
    general = read_corpus(recipe.data.general) if recipe.data.general else []
    general = [line for line in general if line.strip()]
    texts = task_texts(recipe, load_task_data(recipe))
    return adapt_encoder(recipe, out_dir, corpus=corpus, general=general, task_texts=texts, progress=progress)


@collective
@staged("adaptation-gain")
def adaptation_gain_stage(
    recipe: Recipe, adapted_dir: Path, out_dir: Path, progress: Progress | None = None
) -> AdaptationGain | None:
    """Whether the adapted encoder beats the base on the task (None when there is nothing to compare:
    strategy ``none`` or ``adapt.keep_only_if_helps`` off)."""
    from models.data import load_task_data
    from models.evaluation.adaptation_gain import measure_adaptation_gain

    base = Path(recipe.resolved_base_model())
    adapted = model_folder(adapted_dir, "encoder")
    if (
        not recipe.adapt.keep_only_if_helps
        or recipe.adapt.strategy == "none"
        or adapted.resolve() == base.resolve()
    ):
        return None
    return measure_adaptation_gain(
        recipe, base, adapted, load_task_data(recipe).train, out_dir, progress=progress
    )


@collective
@staged("fine-tune")
def finetune_stage(
    recipe: Recipe, encoder_dir: Path, out_dir: Path, progress: Progress | None = None
) -> FinetuneResult:
    """Fine-tune ``encoder_dir`` (an adapted encoder, or the base model) on the recipe's labelled data."""
    from models.data import load_task_data
    from models.training.finetune import finetune

    data = load_task_data(recipe)
    return finetune(
        recipe, model_folder(encoder_dir, "encoder"), data.train, data.eval, out_dir, progress=progress
    )


@staged("evaluate")
def evaluate_stage(recipe: Recipe, model_dir: Path, out_dir: Path) -> EvalResult:
    """Task metrics, per-class and per-slice, calibration and plots of a fine-tuned model on the eval split."""
    from models.data import load_task_data
    from models.evaluation.evaluate import evaluate_model

    data = load_task_data(recipe)
    return evaluate_model(recipe, model_folder(model_dir, "model"), data.eval, out_dir)


@staged("export")
def export_stage(
    recipe: Recipe, model_dir: Path, out_dir: Path, progress: Progress | None = None
) -> ExportResult:
    """ONNX variants of a fine-tuned model, each checked for parity on the eval split, as a serving bundle."""
    from models.data import load_task_data, ner_tag_set, ner_text
    from models.export.onnx import check_export_target, export_bundle
    from models.training.task_model import inference_max_length

    check_export_target(out_dir)  # before any work: the export replaces folders inside out_dir
    data = load_task_data(recipe)
    if recipe.task == "ner":
        texts = [ner_text(tokens) for tokens in data.eval["tokens"]]
        gold = [list(tags) for tags in data.eval["tags"]]
        # the entity-F1 drop needs one tag per whitespace-separated word of the text the service receives
        fits = all(len(t.split()) == len(g) for t, g in zip(texts, gold, strict=True))
        labels = gold if fits else None
        tags = ner_tag_set(list(recipe.data.labels))
    else:
        texts, labels, tags = list(data.eval["text"]), list(data.eval["label"]), list(recipe.data.labels)
    return export_bundle(
        model_folder(model_dir, "model"),
        out_dir,
        name=recipe.name,
        task=recipe.task,
        labels=tags,
        max_length=inference_max_length(recipe, model_folder(model_dir, "model")),
        config=recipe.export,
        parity_texts=texts,
        parity_labels=labels,
        progress=progress,
        pooling_from=recipe.resolved_base_model(),
    )


def model_folder(path: Path, inner: str) -> Path:
    """A Hugging Face model folder: ``path`` itself, or ``path/<inner>`` when given a stage's output folder
    (``dapt adapt`` writes ``<out>/encoder``, ``dapt finetune`` writes ``<out>/model``)."""
    path = Path(path).expanduser()
    for candidate in (path, path / inner):
        if (candidate / "config.json").is_file():
            return candidate
    if not path.exists():
        raise StageInputError(f"{path} does not exist")
    raise StageInputError(
        f"{path} is not a model folder: no config.json in it or in {path / inner}; give the folder a previous "
        f"stage wrote (dapt adapt → <out>/encoder, dapt finetune → <out>/model)"
    )
