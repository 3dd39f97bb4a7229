"""Domain adaptation: tiny BERT (2 layers, hidden 32) from the tiny_base_model fixture, a few dozen sentences,
max_steps of 3-8. Every test asserts an observable effect (loss fell, weights kept, tokens added, resumed)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Repetitive on purpose: a tiny model learns it within a few high-LR steps, so the held-out loss reliably falls.
CORPUS = [
    f"The company reported quarterly revenue of {n} million euros. Operating profit rose sharply. "
    f"Earnings per share beat analyst estimates."
    for n in range(36)
]
GENERAL = [f"The cat slept in the garden on day {n}. The weather was warm and sunny." for n in range(24)]
TASK = [f"Shares fell {n} percent after the company cut its guidance." for n in range(16)]


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def make_recipe(base: Path, **adapt):
    from models.recipe import recipe_from_dict

    settings = {
        "max_steps": 6,
        "learning_rate": 1e-2,
        "batch_size": 8,
        "heldout_fraction": 0.2,
        "warmup_ratio": 0.0,
        "head_warmup_steps": 30,  # the tiny base is a bare BertModel: its MLM head is new
        "head_warmup_learning_rate": 3e-3,
    }
    settings.update(adapt)
    return recipe_from_dict(
        {
            "name": "adapt-test",
            "base_model": str(base),
            "data": {"corpus": "corpus.txt", "train": "train.csv", "labels": ["neg", "pos"]},
            "adapt": settings,
        }
    )


def run_adapt(base: Path, out: Path, corpus=CORPUS, general=GENERAL, task=TASK, lines=None, **adapt):
    from models.training.adapt import adapt_encoder

    return adapt_encoder(
        make_recipe(base, **adapt),
        out,
        corpus=corpus,
        general=general,
        task_texts=task,
        progress=(lines.append if lines is not None else None),
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dapt_result(tiny_base_model, tmp_path_factory):
    lines: list[str] = []
    result = run_adapt(tiny_base_model, tmp_path_factory.mktemp("dapt"), lines=lines, max_steps=8)
    return result, lines


def test_dapt_lowers_heldout_domain_loss_and_reports_metrics(dapt_result):
    result, lines = dapt_result
    metrics = result.metrics
    for key in (
        "domain_loss_before",
        "domain_loss_after",
        "general_loss_before",
        "general_loss_after",
        "forgetting_delta",
        "general_pseudo_perplexity_before",
        "general_pseudo_perplexity_after",
        "train_tokens",
        "train_seconds",
        "tokens_per_second",
        "added_tokens",
    ):
        assert key in metrics, key
    assert metrics["domain_loss_on"] == "heldout"
    assert metrics["domain_loss_after"] < metrics["domain_loss_before"] - 0.3
    assert metrics["forgetting_delta"] == pytest.approx(
        metrics["general_loss_after"] - metrics["general_loss_before"]
    )
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0
    assert result.strategy == "dapt"
    assert any("eval_loss" in entry for entry in result.log_history)
    assert any(line.startswith("[adapt:dapt] step") and "loss" in line for line in lines)
    assert result.curves_png is not None and result.curves_png.stat().st_size > 5000


def test_dapt_encoder_dir_loads_into_classifiers_with_encoder_weights(dapt_result):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    encoder_dir = dapt_result[0].encoder_dir
    assert (encoder_dir / "model.safetensors").is_file() and (encoder_dir / "tokenizer.json").is_file()
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in encoder_dir.iterdir())
    _, info = AutoModelForSequenceClassification.from_pretrained(
        encoder_dir, num_labels=3, output_loading_info=True
    )
    assert sorted(info["missing_keys"]) == [
        "classifier.bias",
        "classifier.weight",
    ]  # encoder + pooler carried
    _, info = AutoModelForTokenClassification.from_pretrained(
        encoder_dir, num_labels=5, output_loading_info=True
    )
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert AutoTokenizer.from_pretrained(encoder_dir).mask_token == "[MASK]"


def test_tapt_and_dapt_plus_tapt_run_their_phases(tiny_base_model, tmp_path):
    tapt = run_adapt(tiny_base_model, tmp_path / "tapt", strategy="tapt", max_steps=3)
    assert [p["name"] for p in tapt.metrics["phases"]] == ["tapt"]
    assert tapt.metrics["domain_loss_on"] == "corpus"  # TAPT never trains on the corpus
    both = run_adapt(tiny_base_model, tmp_path / "both", strategy="dapt+tapt", max_steps=3)
    assert [(p["name"], p["steps"]) for p in both.metrics["phases"]] == [("dapt", 3), ("tapt", 3)]
    assert (tmp_path / "both" / "phases" / "dapt" / "model.safetensors").is_file()
    assert {entry["phase"] for entry in both.log_history} == {"dapt", "tapt"}


def test_none_returns_base_untouched_and_still_measures(tiny_base_model, tmp_path):
    weights = tiny_base_model / "model.safetensors"
    digest = sha(weights)
    result = run_adapt(tiny_base_model, tmp_path / "none", strategy="none")
    assert result.encoder_dir == tiny_base_model and sha(weights) == digest
    assert result.metrics["general_loss_before"] is not None
    assert result.metrics["general_loss_before"] == result.metrics["general_loss_after"]
    assert result.metrics["forgetting_delta"] == 0.0 and result.metrics["train_tokens"] == 0


def test_scratch_trains_own_tokenizer_and_a_loadable_model(tiny_base_model, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    result = run_adapt(
        tiny_base_model,
        tmp_path / "scratch",
        strategy="scratch",
        max_steps=4,
        scratch_vocab_size=150,
        scratch_hidden_size=32,
        scratch_layers=1,
        scratch_heads=2,
    )
    tokenizer = AutoTokenizer.from_pretrained(result.encoder_dir)
    assert len(tokenizer) <= 150 and tokenizer.mask_token == "[MASK]"
    assert "revenue" in tokenizer.get_vocab()  # learned from the corpus
    model = AutoModelForTokenClassification.from_pretrained(result.encoder_dir, num_labels=3)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert result.metrics["domain_loss_after"] < result.metrics["domain_loss_before"]
    # nothing pretrained to forget: general loss after only, no delta, no head warm-up
    assert result.metrics["general_loss_before"] is None and result.metrics["general_loss_after"] is not None
    assert result.metrics["forgetting_delta"] is None and "scratch" in result.metrics["forgetting_note"]
    assert result.metrics["head_warmup"] is None and result.metrics["head_warmup_steps"] == 0


def test_scratch_rejects_heads_that_do_not_divide_hidden(tiny_base_model, tmp_path):
    from models.training.adapt import AdaptError

    with pytest.raises(AdaptError, match="scratch_heads"):
        run_adapt(
            tiny_base_model,
            tmp_path / "bad",
            strategy="scratch",
            scratch_hidden_size=30,
            scratch_heads=4,
            scratch_vocab_size=150,
        )


def test_mlm_nsp_trains_pretraining_heads(tiny_base_model, tmp_path):
    from safetensors import safe_open

    from models.training.mlm import build_nsp_pairs

    pairs = build_nsp_pairs(CORPUS, seed=1)
    assert {label for _, _, label in pairs} == {0, 1}
    result = run_adapt(tiny_base_model, tmp_path / "nsp", objective="mlm+nsp", max_steps=3)
    with safe_open(result.encoder_dir / "model.safetensors", "pt") as weights:
        assert any(k.startswith("cls.seq_relationship") for k in weights.keys())
    assert any("loss" in entry for entry in result.log_history)
    warmed = result.metrics["head_warmup"]["parameter_names"]  # the new NSP head is warmed up too
    assert "cls.seq_relationship.weight" in warmed and "cls.predictions.transform.dense.weight" in warmed
    assert not any(name.startswith("bert.") for name in warmed)


def test_freeze_layers_keeps_embeddings_and_lower_layers_identical(tiny_base_model, tmp_path):
    from safetensors.torch import load_file

    result = run_adapt(tiny_base_model, tmp_path / "frozen", freeze_layers=1, max_steps=3)
    base = load_file(tiny_base_model / "model.safetensors")
    adapted = load_file(result.encoder_dir / "model.safetensors")
    for name, tensor in base.items():
        key = name if name in adapted else f"bert.{name}"
        frozen = name.startswith(
            ("embeddings.", "encoder.layer.0.", "bert.embeddings.", "bert.encoder.layer.0.")
        )
        trained = name.startswith(("encoder.layer.1.", "bert.encoder.layer.1.")) and name.endswith("weight")
        if frozen:
            assert adapted[key].equal(tensor), f"{name} changed although frozen"
        if trained:
            assert not adapted[key].equal(tensor), f"{name} did not train"
    assert result.metrics["frozen_parameters"] > 0


def test_freeze_layers_beyond_depth_is_a_clear_error(tiny_base_model, tmp_path):
    from models.training.adapt import AdaptError

    with pytest.raises(AdaptError, match="freeze_layers is 5 but the model has only 2 layers"):
        run_adapt(tiny_base_model, tmp_path / "deep", freeze_layers=5)


def test_replay_mixes_general_text_and_measures_on_other_sentences(tiny_base_model, tmp_path):
    from models.training.forgetting import split_general

    measured, pool = split_general(GENERAL, replay_fraction=0.25, seed=42)
    assert measured and pool and not set(measured) & set(pool)
    result = run_adapt(tiny_base_model, tmp_path / "replay", replay_fraction=0.25, max_steps=3)
    n_train = len(CORPUS) - round(len(CORPUS) * 0.2)
    assert result.metrics["replay_examples"] == round(0.25 / 0.75 * n_train)
    assert result.metrics["general_texts_measured"] == len(measured)


def test_general_text_trained_on_is_never_measured_and_the_split_ignores_the_replay_share():
    from models.training.forgetting import split_general

    assert split_general(GENERAL, 0.0, seed=42) == ([t.strip() for t in GENERAL], [])  # nothing trained on
    warmup_only = split_general(GENERAL, 0.0, seed=42, trained_on=True)
    with_replay = split_general(GENERAL, 0.2, seed=42, trained_on=True)
    assert warmup_only == with_replay  # curbed and uncurbed runs are measured on the same sentences
    measured, pool = warmup_only
    assert measured and pool and not set(measured) & set(pool)


def test_extend_vocab_adds_split_words_and_resizes(tiny_base_model, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    corpus = [f"Hyperinflationary pressure and rehypothecation risk rose in quarter {n}." for n in range(20)]
    result = run_adapt(tiny_base_model, tmp_path / "vocab", corpus=corpus, extend_vocab=2, max_steps=3)
    assert result.metrics["added_tokens"] == ["hyperinflationary", "rehypothecation"]
    tokenizer = AutoTokenizer.from_pretrained(result.encoder_dir)
    base_size = AutoConfig.from_pretrained(tiny_base_model).vocab_size
    assert AutoConfig.from_pretrained(result.encoder_dir).vocab_size == len(tokenizer) == base_size + 2
    assert tokenizer.tokenize("hyperinflationary pressure") == ["hyperinflationary", "pressure"]


def test_masked_lm_loss_uses_the_same_masks_every_call(tiny_base_model):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from models.training.forgetting import masked_lm_loss

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_pretrained(tiny_base_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    first = masked_lm_loss(model, tokenizer, GENERAL)
    torch.rand(1000)  # disturb the global RNG: the masks must not depend on it
    assert masked_lm_loss(model, tokenizer, GENERAL) == first
    assert masked_lm_loss(model, tokenizer, GENERAL, seed=7) != first


def test_empty_corpus_is_a_clear_error(tiny_base_model, tmp_path):
    from models.training.adapt import AdaptError

    with pytest.raises(AdaptError, match="corpus is empty"):
        run_adapt(tiny_base_model, tmp_path / "empty", corpus=["", "  "])


RESUME_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from models.training.adapt import adapt_encoder
from models.recipe import recipe_from_dict
recipe = recipe_from_dict(json.loads(sys.argv[1]))
marker, stop_at = Path(sys.argv[3]), sys.argv[4]
def progress(line):
    print(line, flush=True)
    if f"checkpoint saved at step {stop_at}" in line:
        marker.write_text(line)
        time.sleep(600)  # parked here until the test kills the process
adapt_encoder(recipe, Path(sys.argv[2]), corpus=json.loads(sys.argv[5]), general=[], task_texts=[],
              progress=progress, checkpoint_every=1)
"""


def test_resumes_from_checkpoint_after_the_process_is_killed(tiny_base_model, tmp_path):
    from models.training.adapt import adapt_encoder

    recipe = make_recipe(tiny_base_model, max_steps=5)
    out, marker = tmp_path / "run", tmp_path / "killed_here"
    script = tmp_path / "adapt_job.py"
    script.write_text(RESUME_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            str(script),
            recipe.model_dump_json(),
            str(out),
            str(marker),
            "2",
            json.dumps(CORPUS),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert process.poll() is None, f"adaptation exited early:\n{process.stdout.read()}"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "dapt" / "checkpoint-2").is_dir()
    assert not (out / "encoder").exists()

    lines: list[str] = []
    result = adapt_encoder(
        recipe, out, corpus=CORPUS, general=[], task_texts=[], progress=lines.append, checkpoint_every=1
    )
    assert any("resumed from checkpoint-2" in line for line in lines)
    assert any(
        "reusing the head warmed up earlier" in line for line in lines
    )  # same "before" as the first run
    assert result.metrics["head_warmup"]["reused"] is True
    trained_steps = [
        int(line.split()[2].split("/")[0]) for line in lines if line.startswith("[adapt:dapt] step")
    ]
    assert trained_steps and min(trained_steps) == 3 and max(trained_steps) == 5  # continued, not restarted
    assert result.metrics["resumed_from_step"] == 2 and result.metrics["phases"][0]["steps"] == 5
    steps = [entry["step"] for entry in result.log_history if "loss" in entry]
    assert steps == sorted(set(steps)) and steps[-1] == 5
    assert (result.encoder_dir / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- head warm-up


def _tiny_mlm(base: Path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from models.training.head_warmup import head_parameter_names

    torch.manual_seed(0)
    model, info = AutoModelForMaskedLM.from_pretrained(base, output_loading_info=True)
    return model, AutoTokenizer.from_pretrained(base), head_parameter_names(model, info["missing_keys"])


def _features(tokenizer, texts):
    encoded = tokenizer(texts, truncation=True, max_length=32, return_special_tokens_mask=True)
    return [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]


def test_head_warmup_trains_only_the_new_head_and_leaves_the_encoder_byte_identical(tiny_base_model):
    from transformers import DataCollatorForLanguageModeling

    from models.training.head_warmup import warm_up_head

    model, tokenizer, names = _tiny_mlm(tiny_base_model)
    # the transform and the output bias are new; the decoder weight is the (pretrained) word-embedding matrix
    assert set(names) == {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    }
    model.bert.encoder.layer[0].attention.self.query.weight.requires_grad = False  # e.g. freeze_layers
    encoder_before = {k: v.clone() for k, v in model.bert.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.cls.state_dict().items()}
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=3, return_tensors="pt")
    result = warm_up_head(
        model,
        names,
        _features(tokenizer, CORPUS),
        _features(tokenizer, GENERAL),
        collator,
        steps=40,
        learning_rate=3e-3,
        batch_size=8,
        seed=1,
    )
    for key, tensor in model.bert.state_dict().items():
        assert tensor.equal(encoder_before[key]), f"{key} changed during the head warm-up"
    changed = {k for k, v in model.cls.state_dict().items() if not v.equal(head_before[k])}
    assert "predictions.transform.dense.weight" in changed and "predictions.bias" in changed
    assert "predictions.decoder.weight" not in changed  # tied to the frozen word embeddings
    # the new output bias starts at the targets' log token frequencies: far below a random head's ln(vocabulary)
    assert result.bias_from_token_frequencies
    assert result.loss_curve[0][1] < math.log(tokenizer.vocab_size) - 3
    assert result.loss_curve[-1][1] < result.loss_curve[0][1] - 0.2  # and the head learned from there
    assert (result.domain_sequences, result.general_sequences) == (160, 160)  # fair to both kinds of text
    assert result.trained_parameters == sum(model.get_parameter(n).numel() for n in names)
    # requires_grad restored: adaptation trains everything it trained before, freezing kept
    assert model.bert.encoder.layer[0].attention.self.query.weight.requires_grad is False
    assert all(
        p.requires_grad for n, p in model.named_parameters() if "layer.0.attention.self.query.weight" not in n
    )


def test_head_warmup_runs_before_measuring_and_is_recorded(tiny_base_model, tmp_path):
    from safetensors.torch import load_file

    from models.training.forgetting import masked_lm_loss, split_general

    lines: list[str] = []
    result = run_adapt(tiny_base_model, tmp_path / "warm", lines=lines, max_steps=3, head_warmup_steps=40)
    metrics = result.metrics
    warmup = metrics["head_warmup"]
    assert metrics["mlm_head_initialised"] is True and metrics["head_warmup_steps"] == 40
    assert warmup["steps"] == 40 and warmup["loss_last"] < warmup["loss_first"] and not warmup["reused"]
    assert [step for step, _ in warmup["loss_curve"]][-1] == 40
    assert metrics["forgetting_note"] is None and metrics["forgetting_delta"] is not None
    assert lines.index(
        next(x for x in lines if x.startswith("[adapt:head-warmup] step 40/40"))
    ) < lines.index(next(x for x in lines if x.startswith("[adapt] measuring before")))
    # "general loss before" is the loss of the base encoder under the warmed head (saved for resuming)
    model, tokenizer, _ = _tiny_mlm(tiny_base_model)
    warmed = load_file(tmp_path / "warm" / "head_warmup" / "head.safetensors")
    assert set(warmed) == set(warmup["parameter_names"])
    model.load_state_dict(warmed, strict=False)
    measured, _ = split_general(GENERAL, 0.0, seed=42, trained_on=True)
    assert masked_lm_loss(model, tokenizer, measured, max_length=128) == pytest.approx(
        metrics["general_loss_before"], rel=1e-5
    )
    assert metrics["general_texts_measured"] == len(measured)


def test_head_warmup_is_skipped_when_the_base_has_a_pretrained_head(tiny_base_model, tmp_path):
    import shutil

    from transformers import AutoModelForMaskedLM

    with_head = tmp_path / "with_head"
    model, _, _ = _tiny_mlm(tiny_base_model)
    model.save_pretrained(with_head)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_base_model / name).is_file():
            shutil.copy(tiny_base_model / name, with_head / name)
    _, info = AutoModelForMaskedLM.from_pretrained(with_head, output_loading_info=True)
    assert not info["missing_keys"]
    lines: list[str] = []
    result = run_adapt(with_head, tmp_path / "run", lines=lines, max_steps=2)
    assert result.metrics["mlm_head_initialised"] is False and result.metrics["head_warmup_steps"] == 0
    assert result.metrics["head_warmup"] is None and not (tmp_path / "run" / "head_warmup").exists()
    assert not any("head-warmup" in line for line in lines)
    assert result.metrics["forgetting_delta"] is not None


def test_new_head_without_warmup_reports_no_forgetting(tiny_base_model, tmp_path):
    lines: list[str] = []
    result = run_adapt(tiny_base_model, tmp_path / "cold", strategy="none", lines=lines, head_warmup_steps=0)
    assert result.metrics["head_warmup"] is None and result.metrics["forgetting_delta"] is None
    assert "head_warmup_steps is 0" in result.metrics["forgetting_note"]
    assert any("warning: the MLM head is newly initialised" in line for line in lines)


def test_nsp_sentence_split_keeps_abbreviations_and_initials_inside_sentences():
    from models.training.mlm import split_sentences

    document = (
        "Sales in the U.S. rose 5%. Mr. Smith of Acme Corp. said so on Jan. 5. Profit fell! "
        "What next? J. K. Rowling wrote it."
    )
    assert split_sentences(document) == [
        "Sales in the U.S. rose 5%.",
        "Mr. Smith of Acme Corp. said so on Jan. 5.",
        "Profit fell!",
        "What next?",
        "J. K. Rowling wrote it.",
    ]


# ---------------------------------------------------------------------------------------------- crash safety


class _Stop(Exception):
    """Stands in for a kill at a known point (raised from the progress callback)."""


def _stop_after_checkpoint(step: int, lines: list[str]):
    def progress(line: str) -> None:
        lines.append(line)
        if f"checkpoint saved at step {step}" in line:
            raise _Stop(line)

    return progress


def test_resume_skips_checkpoints_cut_short_while_saving(tiny_base_model, tmp_path):
    """A kill while the Trainer writes checkpoint-N leaves it without (or with half) trainer_state.json; resume
    must use the newest complete one instead of failing on that folder for good."""
    import shutil

    from models.training.adapt import adapt_encoder

    recipe = make_recipe(tiny_base_model, max_steps=5, head_warmup_steps=0)
    out = tmp_path / "run"
    first: list[str] = []
    with pytest.raises(_Stop):
        adapt_encoder(
            recipe,
            out,
            corpus=CORPUS,
            general=[],
            task_texts=[],
            progress=_stop_after_checkpoint(2, first),
            checkpoint_every=1,
        )
    checkpoints = out / "checkpoints" / "dapt"
    assert (checkpoints / "checkpoint-2" / "trainer_state.json").is_file()
    # checkpoint-3: weights written, killed before the state; checkpoint-4: killed inside the state file
    shutil.copytree(checkpoints / "checkpoint-2", checkpoints / "checkpoint-3")
    (checkpoints / "checkpoint-3" / "trainer_state.json").unlink()
    shutil.copytree(checkpoints / "checkpoint-2", checkpoints / "checkpoint-4")
    state = (checkpoints / "checkpoint-4" / "trainer_state.json").read_text()
    (checkpoints / "checkpoint-4" / "trainer_state.json").write_text(state[: len(state) // 2])

    lines: list[str] = []
    result = adapt_encoder(
        recipe, out, corpus=CORPUS, general=[], task_texts=[], progress=lines.append, checkpoint_every=1
    )
    assert any("checkpoint-4 is incomplete" in line for line in lines)
    assert any("checkpoint-3 is incomplete" in line for line in lines)
    assert any("resumed from checkpoint-2" in line for line in lines)
    assert result.metrics["resumed_from_step"] == 2 and result.metrics["phases"][0]["steps"] == 5
    assert (result.encoder_dir / "model.safetensors").is_file()


def test_kill_while_the_encoder_is_rewritten_after_done_keeps_a_loadable_encoder(
    tiny_base_model, tmp_path, monkeypatch
):
    """The pooler is written into encoder/model.safetensors after phase_done.json: a kill in that write must
    leave the complete previous file (temporary file + rename), and the next run reuses a loadable encoder."""
    import safetensors.torch
    from safetensors.torch import load_file, save_file

    from models.training.adapt import adapt_encoder

    recipe = make_recipe(tiny_base_model, max_steps=3, head_warmup_steps=0)
    out = tmp_path / "run"
    adapt_encoder(recipe, out, corpus=CORPUS, general=[], task_texts=[])
    weights = out / "encoder" / "model.safetensors"
    state = load_file(weights)
    assert any(".pooler." in key for key in state)
    # Back to the moment after phase_done.json, before the pooler was carried over.
    save_file({k: v for k, v in state.items() if ".pooler." not in k}, weights, metadata={"format": "pt"})
    before = sha(weights)

    def killed_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # the first bytes of a file that never got finished
        raise _Stop(f"killed while writing {filename}")

    monkeypatch.setattr(safetensors.torch, "save_file", killed_midway)
    with pytest.raises(_Stop):
        adapt_encoder(recipe, out, corpus=CORPUS, general=[], task_texts=[])
    monkeypatch.undo()
    assert sha(weights) == before  # the encoder on disk is the complete one, not a truncated rewrite

    lines: list[str] = []
    result = adapt_encoder(recipe, out, corpus=CORPUS, general=[], task_texts=[], progress=lines.append)
    assert any("already finished with this configuration" in line for line in lines)
    assert result.metrics["base_pooler_kept"] is True
    assert any(".pooler." in key for key in load_file(weights))


def test_a_damaged_finished_encoder_is_trained_again_not_reused(tiny_base_model, tmp_path):
    from models.training.adapt import adapt_encoder

    recipe = make_recipe(tiny_base_model, max_steps=3, head_warmup_steps=0)
    out = tmp_path / "run"
    adapt_encoder(recipe, out, corpus=CORPUS, general=[], task_texts=[])
    weights = out / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # damaged by something outside our writes

    lines: list[str] = []
    result = adapt_encoder(recipe, out, corpus=CORPUS, general=[], task_texts=[], progress=lines.append)
    assert any("does not load" in line and "training again" in line for line in lines)
    assert result.metrics["phases"][0]["reused"] is False and result.metrics["phases"][0]["steps"] == 3
    assert weights.stat().st_size > 1000


def test_two_runs_on_one_cache_entry_take_turns(tiny_base_model, tmp_path):
    """Same settings, same DAPT_HOME/adapt/<key>: the second run waits for the first, then reuses its result."""
    import threading

    from models.training.adapt import adapt_encoder

    recipe = make_recipe(tiny_base_model, max_steps=3, head_warmup_steps=0)
    out = tmp_path / "adapt" / "samekey"
    inside, release = threading.Event(), threading.Event()
    first_lines: list[str] = []
    second_lines: list[str] = []
    errors: list[BaseException] = []

    def first_progress(line: str) -> None:
        first_lines.append(line)
        if line.startswith("[adapt] measuring before"):
            inside.set()
            release.wait(timeout=120)

    def run(progress) -> None:
        try:
            adapt_encoder(recipe, out, corpus=CORPUS, general=[], task_texts=[], progress=progress)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=run, args=(first_progress,))
    first.start()
    try:
        assert inside.wait(timeout=120), f"first run never started measuring: {first_lines[-3:]}"
        second = threading.Thread(target=run, args=(second_lines.append,))
        second.start()
        deadline = time.monotonic() + 30
        while not any("waiting for it to finish" in line for line in second_lines):
            assert time.monotonic() < deadline, f"second run did not wait: {second_lines}"
            time.sleep(0.05)
        time.sleep(0.5)
        assert not any("measuring before" in line for line in second_lines)  # it has not started its own work
    finally:
        release.set()
        first.join(timeout=300)
    second.join(timeout=300)
    assert errors == []
    assert any("already finished with this configuration" in line for line in second_lines)
