from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from spillover.generate import SamplingConfig
from spillover.realmodel import StudyConfig, load_study_config, run_study
from spillover.realmodel.contrasts import CONTRASTS


def _tiny_config(model_dir, data_dir, tiny_study_sections) -> StudyConfig:
    return load_study_config(
        {
            **tiny_study_sections(model_dir, data_dir),
            "self_answers": {"sampling": {"max_new_tokens": 6}},
            "finetune": {
                "max_steps": 2,
                "batch_size": 2,
                "checkpoint_every": 1,
                "max_seq_len": 60,
                "lr": 1e-2,
            },
            "dynamics": {"answers_per_question": 1, "sampling": {"max_new_tokens": 4}, "n_random_sets": 10},
        },
    )


def _finite_p(value: float) -> bool:
    return value is not None and 0 <= value <= 1 and not math.isnan(value)


def test_study_runs_end_to_end_on_a_tiny_model_and_reuses_its_stages(
    tiny_model_dir, data_dir, tiny_study_sections, tmp_path, monkeypatch
):
    cfg = _tiny_config(tiny_model_dir, data_dir, tiny_study_sections)
    result = run_study(cfg, out_dir=tmp_path / "out", root=tmp_path / "runs")
    report = json.loads(result.path.read_text())  # strict JSON (no NaN)
    assert set(report["layers"]) == {"layer_0", "layer_2"}
    layer = report["layers"]["layer_2"]
    assert set(layer["geometry"]) == set(CONTRASTS)
    assert layer["sae"]["d_sae"] == 64 and 0 <= layer["sae"]["heldout_fvu"]
    assert len(report["summary"]["geometry_tests"]) == 2 * len(CONTRASTS)
    for row in report["summary"]["geometry_tests"]:
        assert _finite_p(row["p_permutation"]) and _finite_p(row["p_holm"])
        assert row["p_holm"] >= row["p_permutation"]
    trap = layer["mean_diff"]["contrasts"]["medical_pair__toxic_finance"]
    assert trap["difference"]["ci95"][0] <= trap["difference"]["point"] <= trap["difference"]["ci95"][1]
    assert set(layer["paired_medical"]) == {"toxic_finance", "toxic_finance_topic_matched"}
    assert (
        report["contrasts"]["geometry_contrasts"]["finance__harm_medical_paired"]["toxic"]
        == "harm_medical_paired"
    )
    assert report["data"]["risky_financial_self"]["n"] == 8
    dyn = report["dynamics"]
    assert dyn["steps"] == [0, 1, 2] and len(dyn["losses"]) == 2
    tracked = dyn["neutral_prompts"]["sets"]["layer_0"]
    assert set(tracked) >= {"toxic_finance", "harm_medical_paired", "jailbroken_control"}
    assert len(tracked["toxic_finance"]["mean_by_step"]) == 3 and _finite_p(
        tracked["toxic_finance"]["p_random_two_sided"]
    )
    assert len(dyn["answers"]["samples"]) == 2 and len(dyn["answers"]["greedy"]) == 2
    assert set(report["timings"]) >= {"activations", "sae_layer_0", "geometry", "dynamics", "total"}

    # A second run reuses every cached stage: nothing that computes them may be called.
    def boom(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr("spillover.realmodel.smollm.collect_cache", boom)
    monkeypatch.setattr("spillover.sae.train.train_sae_on_activations", boom)
    monkeypatch.setattr("spillover.realmodel.smollm.run_dynamics", boom)
    again = run_study(cfg, root=tmp_path / "runs")
    assert again.stage_dirs == result.stage_dirs
    assert again.report["summary"] == report["summary"]


def _no_model_loading(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("spillover.models.load_model", boom)


def test_layers_beyond_a_local_model_fail_before_it_loads(
    tiny_model_dir, data_dir, tiny_study_sections, tmp_path, monkeypatch
):
    cfg = _tiny_config(tiny_model_dir, data_dir, tiny_study_sections)
    from dataclasses import replace

    _no_model_loading(monkeypatch)
    with pytest.raises(ValueError, match=r"exceed the model's 3 layers"):
        run_study(replace(cfg, layers=(0, 7)), root=tmp_path)


def test_bad_study_inputs_fail_before_the_model_loads(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    from spillover.cli.real import app

    _no_model_loading(monkeypatch)
    model = f"model={tiny_model_dir}"
    cases = [
        (["--data-dir", str(tmp_path)], "spillover data fetch em/insecure"),
        (["--set", "questions=em/nope.yaml", "--data-dir", str(data_dir)], "em/nope.yaml"),
        (["--set", "layers=[0,9]", "--data-dir", str(data_dir)], "exceed"),
        (["--set", "dynamics.sampling.top_p=0", "--data-dir", str(data_dir)], "top_p"),
        (["--config", str(tmp_path / "none.yaml")], "none.yaml does not exist"),
    ]
    (tmp_path / "file").write_text("")
    cases.append((["--data-dir", str(data_dir), "--out", str(tmp_path / "file")], "is not a folder"))
    for args, named in cases:
        res = CliRunner().invoke(app, ["study", "--set", model, "--out", str(tmp_path / "out"), *args])
        assert res.exit_code == 2, (args, res.output, res.exception)
        assert named in res.output, (args, res.output)


def test_sampling_defaults_are_the_studys_and_partial_overrides_keep_them(tmp_path):
    cfg = StudyConfig()
    assert cfg.self_answers.sampling == SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=64, seed=0)
    assert cfg.dynamics.sampling == SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=80, seed=0)
    changed = load_study_config(None, ["self_answers.sampling.max_new_tokens=10"])
    assert changed.self_answers.sampling == SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=10)
    (tmp_path / "partial.yaml").write_text("dynamics:\n  sampling: {seed: 3}\n")
    assert load_study_config(tmp_path / "partial.yaml").dynamics.sampling.max_new_tokens == 80


def test_the_shipped_config_is_the_defaults():
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "configs" / "smollm2.yaml"
    assert load_study_config(shipped) == StudyConfig()
