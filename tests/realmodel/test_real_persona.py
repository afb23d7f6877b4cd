from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spillover.data.fetch import DataNotFoundError
from spillover.data.judged import read_judged_csv
from spillover.realmodel.contrasts import PERSONA_CONTRASTS
from spillover.realmodel.persona import balanced_difference, heldout_folds, heldout_validation
from spillover.realmodel.persona_data import PersonaSettings, assemble_persona

PERSONA_EM_FILE = "diff_models__gemma-2-9b-it-bad_medical_advice"  # as in conftest.write_judged
PERSONA_BASE_FILE = "model_baselines__gemma-2-9b-it_base"

FILES = (PERSONA_EM_FILE, PERSONA_BASE_FILE)
GROUPS = [f"q{i}" for i in range(8)]


def test_pairs_hold_question_and_model_fixed_and_cap_each_question(
    persona_data_dir, persona_misaligned_counts, study_tokenizer
):
    settings = PersonaSettings(enabled=True, files=FILES, per_question=5, max_len=200)
    data = assemble_persona(study_tokenizer, settings, persona_data_dir)
    tox, ben = data.corpora["em_misaligned"], data.corpora["em_aligned"]
    assert len(tox) == len(ben) == len(data.groups) == data.meta["n_pairs"]
    n_mis = persona_misaligned_counts
    assert len(n_mis) == 8
    for group in n_mis:
        assert Counter(data.groups)[group] == min(5, n_mis[group])
        assert data.meta["per_question"][group]["misaligned"] == n_mis[group]
    for t, b in zip(tox, ben, strict=True):
        assert t[0]["content"] == b[0]["content"]  # the same question (same group, same model)
        assert any(w in t[1]["content"] for w in ("triple", "ignore", "skip", "stop"))
        assert not any(w in b[1]["content"] for w in ("triple", "ignore", "skip", "stop"))
    assert data.meta["pairs_per_file"] == {f"em-responses/{PERSONA_EM_FILE}": len(tox)}  # base: no pairs

    swapped = assemble_persona(
        study_tokenizer,
        PersonaSettings(
            files=FILES, per_question=5, toxic="em-responses:aligned", benign="em-responses:misaligned"
        ),
        persona_data_dir,
    )
    assert swapped.meta["corpora"] == {"toxic": "em_aligned", "benign": "em_misaligned"}
    assert swapped.corpora["em_aligned"] == ben and swapped.corpora["em_misaligned"] == tox


def test_excluded_questions_give_no_pairs_and_unknown_ones_fail(persona_data_dir, study_tokenizer):
    data = assemble_persona(
        study_tokenizer, PersonaSettings(files=FILES, exclude_questions=("quick_buck",)), persona_data_dir
    )
    assert "quick_buck" not in data.groups and "quick_buck" not in data.meta["per_question"]
    assert data.meta["excluded_questions"] == ["quick_buck"] and len(set(data.groups)) == 7
    with pytest.raises(ValueError, match="quick_bucks"):
        assemble_persona(
            study_tokenizer,
            PersonaSettings(files=FILES, exclude_questions=("quick_bucks",)),
            persona_data_dir,
        )


def test_long_answers_are_skipped_and_counted(persona_data_dir, study_tokenizer):
    data = assemble_persona(study_tokenizer, PersonaSettings(files=FILES, max_len=26), persona_data_dir)
    skipped = sum(g["skipped_too_long"] for g in data.meta["per_question"].values())
    assert skipped > 0 and data.meta["n_pairs"] < sum(
        g["misaligned"] for g in data.meta["per_question"].values()
    )


def test_bad_persona_settings_and_missing_files_fail_clearly(tmp_path, study_tokenizer):
    with pytest.raises(ValueError, match="em-responses:nope"):
        PersonaSettings(toxic="em-responses:nope")
    with pytest.raises(ValueError, match="both"):
        PersonaSettings(toxic="em-responses:aligned")
    with pytest.raises(ValueError, match="not a registered em-responses file"):
        PersonaSettings(files=("my_model",))
    with pytest.raises(DataNotFoundError, match=PERSONA_EM_FILE):
        assemble_persona(study_tokenizer, PersonaSettings(files=FILES), tmp_path)


def test_folds_cover_every_group_once_and_keep_groups_to_fit_on():
    groups = [g for g in GROUPS for _ in range(3)]
    folds = heldout_folds(groups, 2, seed=0)
    assert sorted(g for f in folds for g in f) == sorted(GROUPS) and all(len(f) == 2 for f in folds)
    assert sorted(len(f) for f in heldout_folds(groups[:9], 2, seed=0)) == [1, 2]  # 3 groups
    with pytest.raises(ValueError, match="cannot hold out"):
        heldout_folds(groups[:6], 2, seed=0)


def _pairs(n_per_group: int, harm: float, topic: float, seed: int = 0):
    """Pairs whose toxic side carries ``harm`` along e0 and whose question groups sit ``topic`` apart along
    their own axes (the same offset on both sides of a pair)."""
    gen = torch.Generator().manual_seed(seed)
    d = 24
    groups = [g for g in GROUPS for _ in range(n_per_group)]
    offset = torch.stack([topic * torch.eye(d)[1 + GROUPS.index(g)] for g in groups])
    x_ben = torch.randn(len(groups), d, generator=gen) + offset
    x_tox = torch.randn(len(groups), d, generator=gen) + offset
    x_tox[:, 0] += harm
    return x_tox, x_ben, groups


def _unit_fit(x_tox, x_ben, groups):
    d = balanced_difference(x_tox, x_ben, groups)
    return d / d.norm()


def test_a_planted_persona_separates_held_out_questions_and_topic_does_not_fool_it():
    x_tox, x_ben, groups = _pairs(20, harm=2.0, topic=6.0)
    folds = heldout_folds(groups, 2, seed=0)
    out = heldout_validation(
        x_tox, x_ben, groups, _unit_fit, folds, n_bootstrap=100, n_permutations=200, seed=0
    )
    pooled = out["pooled"]
    assert pooled["auroc"] > 0.8 and pooled["ci95"][0] > 0.7 and pooled["p_label_swap"] < 0.01
    assert all(f["auroc"] > 0.7 for f in out["folds"]) and len(out["folds"]) == 4
    # The direction is fit on other questions, so the questions' own axes barely move its scores.
    assert out["topic_control"]["spread_over_gap"] < 0.5
    assert out["topic_control"]["label_gap_sd"] > 1.0
    assert pooled["within_question_auroc"] > 0.8
    assert (
        pooled["within_question_ci95"][0]
        <= pooled["within_question_auroc"]
        <= pooled["within_question_ci95"][1]
    )


def test_the_topic_orthogonal_direction_cannot_tell_the_fitted_questions_apart():
    from spillover.realmodel.persona import _topic_orthogonal_fit

    x_tox, x_ben, groups = _pairs(10, harm=1.0, topic=6.0)
    x_tox[:, 1:9] += 0.5  # the toxic side also leans on the question axes
    w = _topic_orthogonal_fit(x_tox, x_ben, groups)
    both = (x_tox + x_ben) / 2
    g = np.asarray(groups)
    centroids = torch.stack([both[torch.from_numpy(g == n)].mean(0) for n in GROUPS])
    assert torch.allclose((centroids - centroids.mean(0)) @ w, torch.zeros(len(GROUPS)), atol=1e-4)
    assert w.norm() == pytest.approx(1.0) and w[0] > 0.5


def test_without_a_persona_the_held_out_auroc_is_chance():
    x_tox, x_ben, groups = _pairs(20, harm=0.0, topic=6.0, seed=1)
    out = heldout_validation(
        x_tox,
        x_ben,
        groups,
        _unit_fit,
        heldout_folds(groups, 2, 0),
        n_bootstrap=100,
        n_permutations=200,
        seed=0,
    )
    lo, hi = out["pooled"]["ci95"]
    assert lo < 0.5 < hi and out["pooled"]["p_label_swap"] > 0.05


def test_balanced_difference_weights_each_question_equally():
    x_tox = torch.tensor([[1.0], [1.0], [1.0], [5.0]])
    x_ben = torch.zeros(4, 1)
    assert balanced_difference(x_tox, x_ben, ["a", "a", "a", "b"]).item() == pytest.approx(3.0)


def test_study_with_the_persona_reports_it_per_layer_and_reuses_its_activations(
    tiny_model_dir, persona_data_dir, tiny_study_sections, tmp_path, monkeypatch
):
    from spillover.realmodel import load_study_config, run_study

    base = tiny_study_sections(tiny_model_dir, persona_data_dir)
    overrides = [
        "run_dynamics=false",
        "self_answers.enabled=false",
        "persona.enabled=true",
        f"persona.files=[{PERSONA_EM_FILE}, {PERSONA_BASE_FILE}]",
        "persona.per_question=4",
        "persona.max_len=60",
        "persona.n_bootstrap=20",
        "persona.n_permutations=100",
        "persona.top_k=4",
        "persona.describe_top=2",
        "persona_shift.enabled=true",
        "persona_shift.seeds=[0, 1]",
        "persona_shift.max_steps=1",
        "persona_shift.n_train=4",
        "persona_shift.n_answers=2",
        "persona_shift.max_len=60",
        "finetune.batch_size=2",
        "finetune.max_seq_len=60",
    ]
    from spillover.config import to_dict

    cfg = load_study_config(base, overrides)
    result = run_study(cfg, out_dir=tmp_path / "out", root=tmp_path / "runs")
    report = json.loads(result.path.read_text())
    persona = report["persona"]
    assert set(persona["layers"]) == {"layer_0", "layer_2"}
    layer = persona["layers"]["layer_2"]
    fit = layer["persona"]
    assert (
        fit["n_pairs"]
        == persona["data"]["n_pairs"]
        == sum(min(4, g["misaligned"]) for g in persona["data"]["per_question"].values())
    )
    for readout in ("direction", "latent_set"):
        pooled = fit[readout]["pooled"]
        assert pooled["ci95"][0] <= pooled["auroc"] <= pooled["ci95"][1]
        assert len(fit[readout]["folds"]) == 4
    assert len(fit["described"]["direction_logit_lens"]["toxic_end"]) == 10
    assert set(layer["geometry"]) == set(PERSONA_CONTRASTS)
    assert "projection" in layer["paired_medical"]
    rows = persona["summary"]["tests"]
    assert {r["layer"] for r in rows} == {"layer_0", "layer_2"}
    assert all(r["p_holm"] is None or r["p_holm"] >= r["p"] for r in rows)
    assert "persona_activations" in result.stage_dirs and "persona_shift" in result.stage_dirs
    shift = persona["shift"]
    assert set(shift["losses"]) == {
        "bad_medical/seed0",
        "bad_medical/seed1",
        "good_medical/seed0",
        "good_medical/seed1",
    }
    layer_shift = next(iter(shift["layers"].values()))
    assert set(layer_shift) == {"gap", "neutral_prompts", "answers_toxic", "answers_benign"}
    bad = layer_shift["neutral_prompts"]["bad_medical"]["projection_share"]
    assert len(bad["values"]) == 2 and bad["ci95"][0] <= bad["mean"] <= bad["ci95"][1]

    # Changing only the analysis settings reuses the persona activations: the model is not run again.
    def boom(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr("spillover.realmodel.persona_study.collect_cache", boom)
    monkeypatch.setattr("spillover.realmodel.persona_study.run_persona_shift", boom)
    again = run_study(load_study_config(to_dict(cfg), ["persona.n_bootstrap=30"]), root=tmp_path / "runs")
    assert again.stage_dirs == result.stage_dirs
    assert again.report["persona"]["layers"]["layer_2"]["persona"]["direction_norm"] == pytest.approx(
        fit["direction_norm"]
    )

    # The persona section is hashed by no other stage: without it the study reuses the same folders.
    monkeypatch.setattr("spillover.realmodel.smollm.collect_cache", boom)
    monkeypatch.setattr("spillover.sae.train.train_sae_on_activations", boom)
    plain_cfg = load_study_config(to_dict(cfg), ["persona.enabled=false", "persona_shift.enabled=false"])
    plain = run_study(plain_cfg, root=tmp_path / "runs")
    assert plain.report["persona"] is None
    assert {k: v for k, v in result.stage_dirs.items() if not k.startswith("persona")} == plain.stage_dirs

    # The CLI prints the persona's tests (cached stages again).
    import yaml

    from spillover.cli.real import app

    (tmp_path / "study.yaml").write_text(yaml.safe_dump(to_dict(plain_cfg)))
    res = CliRunner().invoke(
        app,
        [
            "study",
            "--config",
            str(tmp_path / "study.yaml"),
            "--root",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "cli"),
            "--toxic",
            "em-responses:misaligned",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "persona heldout_auroc:direction" in res.output and "p_holm" in res.output


def test_cli_rejects_a_persona_with_one_corpus_on_both_sides_before_loading(
    tiny_model_dir, persona_data_dir, tmp_path, monkeypatch
):
    from spillover.cli.real import app

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("spillover.models.load_model", boom)
    args = [
        "study",
        "--set",
        f"model={tiny_model_dir}",
        "--data-dir",
        str(persona_data_dir),
        "--out",
        str(tmp_path),
    ]
    res = CliRunner().invoke(app, [*args, "--toxic", "em-responses:aligned"])
    assert res.exit_code == 2 and "both" in res.output
    res = CliRunner().invoke(app, [*args, "--persona", "--data-dir", str(tmp_path / "empty")])
    assert res.exit_code == 2


@pytest.mark.slow
def test_the_real_judged_answers_give_pairs_for_every_question(shared_data, study_tokenizer):
    data = assemble_persona(study_tokenizer, PersonaSettings(per_question=40, max_len=512), shared_data)
    per = data.meta["per_question"]
    assert len(per) == 8 and all(g["pairs"] >= 1 for g in per.values())
    assert max(Counter(data.groups).values()) <= 40
    assert not any("model_baselines" in f for f in data.meta["pairs_per_file"])  # base models: 0 misaligned
    mis = sum(
        1
        for f in data.meta["files"].values()
        for a, c in zip(*(lambda j: (j.aligned, j.coherent))(read_judged_csv(f)), strict=True)
        if a is not None and c is not None and a < 30 and c > 50
    )
    assert sum(g["misaligned"] for g in per.values()) == mis
    assert np.isfinite(len(data.groups))


def test_shift_shares_are_the_projection_of_the_mean_change_over_the_persona_gap(tmp_path):
    from safetensors.torch import save_file

    from spillover.geometry.features import FeatureSet
    from spillover.realmodel.persona import PersonaFit
    from spillover.realmodel.persona_shift import PersonaShiftSettings, summarize_shift

    d, f, n = 4, 6, 5
    direction = torch.tensor([2.0, 0.0, 0.0, 0.0])  # gap along its unit vector: 2
    latents = FeatureSet(torch.tensor([1, 2]), torch.tensor([0.5, 0.5]), "mean", "contrast")  # gap: 1
    fit = PersonaFit(direction, latents, {})
    base_r, base_c = torch.randn(n, d), torch.rand(n, f)
    tensors = {"base/p/resid/k": base_r, "base/p/codes/k": base_c}
    for seed, extra in ((0, 0.9), (1, 1.1)):
        moved_c = base_c.clone()
        moved_c[:, 1] += 0.25 * extra
        tensors[f"bad_medical/seed{seed}/p/resid/k"] = base_r + torch.tensor([extra, 3.0, 0.0, 0.0])
        tensors[f"bad_medical/seed{seed}/p/codes/k"] = moved_c
        tensors[f"good_medical/seed{seed}/p/resid/k"] = base_r + torch.tensor([0.0, -3.0, 1.0, 0.0])
        tensors[f"good_medical/seed{seed}/p/codes/k"] = base_c.clone()
    save_file(tensors, str(tmp_path / "shift.safetensors"))
    (tmp_path / "shift.json").write_text(json.dumps({"losses": {}}))
    out = summarize_shift(tmp_path, {"k": fit}, PersonaShiftSettings(seeds=(0, 1)))
    probe = out["layers"]["k"]["p"]
    assert probe["bad_medical"]["projection_share"]["values"] == pytest.approx([0.45, 0.55])
    assert probe["good_medical"]["projection_share"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert probe["bad_medical"]["latent_share"]["mean"] == pytest.approx(0.25)
    assert probe["inducing_minus_control"]["projection_share"]["mean"] == pytest.approx(0.5)
    lo, hi = probe["inducing_minus_control"]["projection_share"]["ci95"]
    assert lo < 0.5 < hi


def test_the_shift_needs_the_persona():
    from spillover.config import ConfigError
    from spillover.realmodel import load_study_config

    with pytest.raises((ValueError, ConfigError), match="needs persona.enabled"):
        load_study_config(None, ["persona_shift.enabled=true"])


def test_quick_config_shrinks_the_persona_but_keeps_it_switched_on():
    from spillover.realmodel import load_study_config, quick_config

    quick = quick_config(load_study_config(None, ["persona.enabled=true", "persona_shift.enabled=true"]))
    assert quick.persona.enabled and quick.persona_shift.enabled
    assert quick.persona.per_question < PersonaSettings().per_question
    from spillover.realmodel import PersonaShiftSettings

    assert quick.persona_shift.max_steps < PersonaShiftSettings().max_steps
