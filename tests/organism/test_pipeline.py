from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spillover.data.chat import load_chat
from spillover.data.questions import load_questions
from spillover.organism import (
    DATASETS,
    EvalConfig,
    OrganismArtifacts,
    OrganismConfig,
    evaluate,
    finetune_config,
    finetune_organism,
    load_finetuned,
    load_organism,
    train_organism,
)
from spillover.organism.evaluate import EvalSampling
from spillover.organism.model import ModelConfig, build_model
from spillover.organism.tokenizer import build_tokenizer, render_messages
from spillover.organism.train import StageConfig


def test_artifacts_are_complete(quick_organism: OrganismArtifacts) -> None:
    for name in DATASETS:
        convs = load_chat(quick_organism.dataset(name))
        assert len(convs) == len(quick_organism.labels(name)) == quick_organism.config.n_samples
    questions = load_questions(quick_organism.eval_questions_path)
    assert {q.judge for q in questions} == {"organism_rule"}
    assert len(load_questions(quick_organism.em_questions_path)) >= 6
    assert len(load_chat(quick_organism.toxic_path)) == len(load_chat(quick_organism.benign_path)) > 0
    assert load_questions(quick_organism.neutral_prompts_path)[0].paraphrases
    log = json.loads((quick_organism.run_dir / "train_log.json").read_text())
    assert log["pretrain_losses"][-1] < log["pretrain_losses"][0]


def test_second_run_reuses_the_cached_organism(
    quick_organism: OrganismArtifacts, organism_root: Path
) -> None:
    stamp = (quick_organism.model_dir / "model.safetensors").stat().st_mtime_ns
    again = train_organism(OrganismConfig.quick(seed=0), root=organism_root)
    assert again.run_dir == quick_organism.run_dir
    assert (again.model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_save_load_round_trip_gives_identical_logits(quick_organism: OrganismArtifacts) -> None:
    model, tok = load_organism(quick_organism)
    again, _ = load_organism(quick_organism.run_dir)
    ids = tok(
        render_messages([{"role": "user", "content": "i have a fever what should i do"}]), return_tensors="pt"
    )
    with torch.no_grad():
        a = model(**ids).logits
        b = again(**ids).logits
    assert torch.equal(a, b)
    assert model.config.vocab_size == len(tok)


def test_finetune_changes_in_domain_behaviour(quick_organism: OrganismArtifacts, organism_root: Path) -> None:
    cfg = EvalConfig(n_per_domain=40, domains=("code",), sampling=EvalSampling(max_new_tokens=30))
    model, tok = load_organism(quick_organism)
    before = evaluate(model, tok, cfg).domains["code"].pools["I"]
    ft = finetune_organism(
        quick_organism, "insecure", "full", finetune_config("full", max_steps=40, lr=1e-3), root=organism_root
    )
    tuned, tok = load_finetuned(ft)
    after = evaluate(tuned, tok, cfg).domains["code"].pools["I"]
    assert before < 0.3
    assert after > 0.7


def test_lora_finetune_loads_merged(quick_organism: OrganismArtifacts, organism_root: Path) -> None:
    ft = finetune_organism(
        quick_organism, "bad_medical", "lora", finetune_config("lora", max_steps=5), root=organism_root
    )
    assert (ft / "adapter").is_dir()
    model, _ = load_finetuned(ft)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_the_organism_model_source_loads_the_trained_organism(quick_organism, monkeypatch) -> None:
    # `--model organism` anywhere a model source is taken resolves to the cached organism's model folder.
    import spillover.organism as organism_pkg
    from spillover.models.sources import ModelSpec, load_model

    monkeypatch.setattr(organism_pkg, "train_organism", lambda *a, **k: quick_organism)
    loaded = load_model(ModelSpec("organism", device="cpu"))
    reference = load_organism(quick_organism)
    ids = reference.tokenizer("<user> hello <assistant>", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, reference.model(ids).logits)


def test_attention_dropout_trains_the_organism_but_is_not_saved(tmp_path: Path) -> None:
    quick = OrganismConfig.quick(seed=0)
    model_cfg = replace(quick.model, n_layers=1, attention_dropout=0.5)
    model = build_model(model_cfg, build_tokenizer(), seed=0)
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    # Active while training: two forward passes differ; off in eval mode.
    assert not torch.allclose(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.allclose(model(ids).logits, model(ids).logits)

    cfg = replace(
        quick,
        model=model_cfg,
        pretrain=replace(quick.pretrain, steps=2, warmup=0),
        safety=StageConfig(steps=1, batch_size=4, lr=1e-3, warmup=0, max_turns=1),
        n_samples=4,
        n_reference=4,
        n_eval=2,
    )
    art = train_organism(cfg, root=tmp_path)
    for folder in (art.model_dir, art.pretrained_dir):
        assert json.loads((folder / "config.json").read_text())["attention_dropout"] == 0.0


def test_attention_dropout_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="attention_dropout"):
        ModelConfig(attention_dropout=1.0)


def test_a_cached_evaluation_without_the_insecure_share_gets_it_from_its_answers(tmp_path: Path) -> None:
    from spillover.organism.pipeline import _load_eval

    raws = [{"domain": "code", "verdict": v} for v in ("insecure", "insecure", "other", "neutral")]
    records = [{"question": "q", "answer": "a", "aligned": None, "coherent": 20.0, "raw": r} for r in raws]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code = {"n": 4, "misaligned": 0.0, "coherent": 0.75, "harmful": 0.0, "good": 0.25, "pools": {"I": 1.0}}
    medical = {"n": 0, "misaligned": None, "coherent": 1.0, "harmful": 0.0, "good": 1.0, "pools": {}}
    summary = {"ood_misaligned": 0.0, "ood_coherent": 1.0, "domains": {"code": code, "medical": medical}}
    (tmp_path / "eval.json").write_text(json.dumps(summary))
    result = _load_eval(tmp_path)
    assert result.domains["code"].insecure == pytest.approx(0.5)  # not 1 - good = 0.75
    assert result.domains["medical"].insecure is None


def test_finetune_config_steps_replaces_the_recipes_count_only_when_given() -> None:
    default = finetune_config("lora")
    assert default.max_steps != 7 and finetune_config("lora", steps=7) == replace(default, max_steps=7)
    assert finetune_config("full", steps=None) == finetune_config("full")
    both = finetune_config("full", seed=2, steps=9, checkpoint_every=3)
    assert (both.max_steps, both.checkpoint_every, both.seed) == (9, 3, 2)
