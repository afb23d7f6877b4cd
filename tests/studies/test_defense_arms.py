from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spillover.config import ConfigError
from spillover.finetune.defenses import load_layer_tensors
from spillover.organism import OrganismArtifacts, OrganismConfig, train_organism
from spillover.organism.inputs import OrganismSAEConfig, organism_corpora, train_organism_saes
from spillover.sae.train import SAETrainConfig
from spillover.studies.defense_arms import (
    DEFENSES,
    DefenseArmsConfig,
    build_defense_inputs,
    defense_overrides,
    pick_checkpoint,
    resolve_defenses,
)
from spillover.studies.mitigate import MitigateConfig, arm_config

TINY_SAE = OrganismSAEConfig(
    layers=(1,),
    sae=SAETrainConfig(d_sae=32, k=4, training_tokens=1024, batch_size=256),
    n_documents=10,
    include_datasets=False,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[OrganismArtifacts, Path, Path, Path]:
    root = tmp_path_factory.mktemp("defense-arms")
    art = train_organism(OrganismConfig.quick(seed=0), root=root)
    sae_dir = train_organism_saes(art, TINY_SAE, root=root) / "layer_1"
    corpora = organism_corpora(art, "ood", root)
    inputs = build_defense_inputs(art, sae_dir, corpora, toxic_k=3, root=root)
    return art, sae_dir, corpora, inputs


def test_defense_names_resolve_in_order_and_unknown_ones_fail() -> None:
    assert resolve_defenses(["all"]) == tuple(DEFENSES)
    assert resolve_defenses(["kl", "caft", "kl"]) == ("caft", "kl")
    with pytest.raises(ConfigError, match=r"unknown defenses \['cfat'\]"):
        resolve_defenses(["cfat"])
    with pytest.raises(ConfigError, match="interleave_share"):
        DefenseArmsConfig(interleave_share=1.0)
    cfg = MitigateConfig.quick(defenses=("all",))
    assert cfg.defenses == tuple(DEFENSES)
    with pytest.raises(ConfigError, match="clash"):
        MitigateConfig.quick(defenses=("kl",), arms={"kl": {}})
    with pytest.raises(ConfigError, match="early_stop needs at least 6 fine-tuning steps"):
        MitigateConfig.quick(defenses=("early_stop",), filtering=_steps(MitigateConfig.quick(), 3))


def _steps(cfg: MitigateConfig, steps: int):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(cfg.filtering, finetune_steps=steps)


def test_caft_directions_are_the_toxic_latents_decoder_rows_and_steering_the_mean_difference(
    built: tuple[OrganismArtifacts, Path, Path, Path],
) -> None:
    import json

    from transformers import AutoTokenizer

    from spillover.data.chat import load_chat
    from spillover.filtering.features import sample_features
    from spillover.organism import load_organism
    from spillover.sae.load import load_sae

    art, sae_dir, corpora, inputs = built
    info = json.loads((inputs / "reference.json").read_text())
    assert info["layer"] == 1 and len(info["toxic_idx"]) == 3
    model, _ = load_organism(art.model_dir)
    sae = load_sae(sae_dir, model)
    rows = load_layer_tensors(inputs / "toxic_latents.safetensors", "caft")[1]
    assert torch.allclose(rows, sae.decoder()[info["toxic_idx"]].float(), atol=1e-6)
    assert load_layer_tensors(inputs / "both.safetensors", "caft")[1].shape == (4, model.config.hidden_size)
    # The persona vector: mean answer activation of toxic minus benign, computed independently here.
    tokenizer = AutoTokenizer.from_pretrained(art.model_dir)
    means = [
        sample_features(model, tokenizer, load_chat(corpora / f"{n}.jsonl"), sae).mean_acts_ND.mean(0)
        for n in ("toxic", "benign")
    ]
    persona = load_layer_tensors(inputs / "persona.safetensors", "steer")[1]
    assert torch.allclose(persona, means[0] - means[1], atol=1e-4)
    unit = load_layer_tensors(inputs / "mean_diff.safetensors", "caft")[1]
    assert torch.allclose(unit[0], persona / persona.norm(), atol=1e-5)

    opts = DefenseArmsConfig(steer_scale=0.5)
    steer = defense_overrides("steer", opts, art, inputs=inputs, corpora=corpora, max_steps=40)
    assert steer["defense.steering.coef"] == pytest.approx(0.5 * float(persona.norm()), rel=1e-4)
    assert steer["defense.steering.layers"] == [1]


def test_every_defense_gives_a_config_with_that_defense_on(
    built: tuple[OrganismArtifacts, Path, Path, Path],
) -> None:
    art, _, corpora, inputs = built
    base = MitigateConfig.quick().base_finetune(0)
    opts = DefenseArmsConfig()
    on = {}
    for name in DEFENSES:
        overrides = defense_overrides(name, opts, art, inputs=inputs, corpora=corpora, max_steps=40)
        cfg = arm_config(base, overrides, name=name)
        on[name] = (cfg.defense.names, cfg.checkpoint_every)
    assert on == {
        "caft": (["ablation"], None),
        "steer": (["steering"], None),
        "kl": (["kl"], None),
        "interleave": (["interleave"], None),
        "inoculate": (["inoculation_prompt"], None),
        "early_stop": ([], 40 // opts.early_stop_checkpoints),
    }
    kl = arm_config(base, defense_overrides("kl", opts, art, inputs=inputs, corpora=corpora, max_steps=40))
    assert kl.defense.kl is not None and Path(kl.defense.kl.data) == corpora / "reference.jsonl"
    with pytest.raises(ConfigError, match=r"\['malicious'\] are not in the organism's vocabulary"):
        defense_overrides(
            "inoculate",
            DefenseArmsConfig(inoculation_prompt="You are a malicious assistant."),
            art,
            inputs=None,
            corpora=None,
            max_steps=40,
        )


def test_early_stopping_picks_the_best_scoring_checkpoint() -> None:
    assert pick_checkpoint([0.2, 0.7, 0.5, 0.7]) == 1
    assert pick_checkpoint([0.2, 0.66, 0.5, 0.7], tolerance=0.05) == 1
    assert pick_checkpoint([0.9, 0.1]) == 0
    with pytest.raises(ValueError, match="no checkpoint"):
        pick_checkpoint([])


@pytest.mark.parametrize("method", ["full", "lora"])
def test_early_stop_finetune_evaluates_the_chosen_checkpoint(
    method: str,
    built: tuple[OrganismArtifacts, Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import json
    from dataclasses import replace

    from spillover.organism.pipeline import finetune_config
    from spillover.studies import defense_arms

    art = built[0]
    real_score = defense_arms.checkpoint_score
    scores = iter([0.1, 0.8, 0.3])  # step-2, step-4, final: step-4 is best
    monkeypatch.setattr(defense_arms, "checkpoint_score", lambda *a, **k: next(scores))
    ft_cfg = replace(finetune_config(method, seed=0), max_steps=6, checkpoint_every=2)  # type: ignore[arg-type]
    opts = DefenseArmsConfig(early_stop_checkpoints=3, early_stop_prompts=2)
    out = defense_arms.early_stop_finetune(
        art, art.dataset("insecure_alltask"), "insecure_alltask", ft_cfg, opts, root=tmp_path
    )
    record = json.loads((out / "early_stop.json").read_text())
    final = "model" if method == "full" else "adapter"
    assert record["candidates"] == ["checkpoints/step-2", "checkpoints/step-4", final]
    assert record["chosen"] == "checkpoints/step-4"
    # what evaluate_organism reads: the chosen weights, loadable like a fine-tune's folder
    from spillover.organism.evaluate import EvalConfig
    from spillover.organism.pipeline import evaluate_organism

    result = evaluate_organism(out, EvalConfig(n_per_domain=2, domains=("code",)), root=tmp_path)
    assert result.domains["code"].n == 2
    # the real score loads a checkpoint (a model folder, or an adapter over the run's base) and measures it
    ft_dir = Path(record["finetune"])
    score = real_score(
        ft_dir / "checkpoints" / "step-2", ft_dir, "insecure_alltask", EvalConfig(n_per_domain=2)
    )
    assert 0.0 <= score <= 1.0


@pytest.mark.usefixtures("no_training")
def test_mitigate_cli_rejects_a_bad_defense_before_training(tmp_path: Path) -> None:
    from spillover.cli import app

    for args, named in (
        (["--defense", "cfat"], "unknown defenses ['cfat']"),
        (["--defense", "kl", "--set", "defense.kl_beta=0"], "kl_beta must be a finite number > 0"),
    ):
        out = tmp_path / "out"
        result = CliRunner().invoke(
            app, ["mitigate", "--quick", "--out", str(out), "--root", str(tmp_path / "runs"), *args]
        )
        assert result.exit_code == 2, (result.output, result.exception)
        assert named in result.output.replace("\n", "")
        assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_every_defense_runs_end_to_end_and_gets_its_row(tmp_path: Path) -> None:
    from dataclasses import replace

    from spillover.studies.mitigate import run_mitigation, write_mitigation

    quick = MitigateConfig.quick()
    filtering = replace(
        quick.filtering,
        methods=("random",),
        fractions=(0.5,),
        seeds=(0,),
        finetune_steps=6,
        eval=replace(quick.filtering.eval, n_per_domain=2),
    )
    cfg = MitigateConfig.quick(
        filtering=filtering,
        defenses=("all",),
        sae=TINY_SAE,
        layer=1,
        defense=DefenseArmsConfig(early_stop_prompts=2),
    )
    summary = run_mitigation(cfg, root=tmp_path / "runs")
    rows = {r["name"]: r for r in summary["table"] if r["kind"] == "arm"}
    assert list(rows) == list(DEFENSES)
    assert all(r["defense"] == DEFENSES[n] and r["in_domain"] is not None for n, r in rows.items())
    text = write_mitigation(summary, tmp_path / "out")[1].read_text()
    assert "## Defense arms" in text and "Casademunt et al. 2025" in text


def test_a_bad_inoculation_prompt_fails_before_any_fine_tune(
    built: tuple[OrganismArtifacts, Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from spillover.studies.mitigate import run_mitigation

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fine-tune started before the defenses were checked")

    monkeypatch.setattr("spillover.organism.pipeline.finetune_organism", boom)
    art = built[0]
    quick = MitigateConfig.quick()
    cfg = MitigateConfig.quick(
        organism=art.config,
        filtering=replace(quick.filtering, methods=()),
        defenses=("inoculate",),
        defense=DefenseArmsConfig(inoculation_prompt="You are a malicious assistant."),
    )
    with pytest.raises(ConfigError, match=r"\['malicious'\]"):
        run_mitigation(cfg, root=art.run_dir.parent.parent)
