from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from spillover.config import load_config
from spillover.realmodel.contrasts import CONTRASTS
from spillover.realmodel.smollm import StudyConfig, run_study


def _tiny_config(model_dir, data_dir) -> StudyConfig:
    return load_config(
        StudyConfig,
        {
            "model": str(model_dir),
            "layers": [0, 2],
            "data": {
                "data_dir": str(data_dir),
                "n_per_dataset": 8,
                "n_benign": 8,
                "n_finetune": 4,
                "max_len": 60,
                "finetune_max_len": 60,
            },
            "self_answers": {"max_new_tokens": 6},
            "sae": {"d_sae": 64, "k": 4, "training_tokens": 512, "batch_size": 128},
            "geometry": {
                "top_k": 5,
                "toxic_top_k": 5,
                "n_null": 20,
                "n_permutations": 200,
                "n_bootstrap": 20,
                "n_random_paired": 20,
                "describe_top": 2,
            },
            "finetune": {
                "max_steps": 2,
                "batch_size": 2,
                "checkpoint_every": 1,
                "max_seq_len": 60,
                "lr": 1e-2,
            },
            "dynamics": {"answers_per_question": 1, "max_new_tokens": 4, "n_random_sets": 10},
        },
    )


def _finite_p(value: float) -> bool:
    return value is not None and 0 <= value <= 1 and not math.isnan(value)


def test_study_runs_end_to_end_on_a_tiny_model_and_reuses_its_stages(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    cfg = _tiny_config(tiny_model_dir, data_dir)
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


def test_cli_reports_a_missing_data_folder_cleanly(tmp_path, tiny_model_dir):
    from spillover.cli.real import app

    res = CliRunner().invoke(
        app,
        ["study", "--data-dir", str(tmp_path), "--set", f"model={tiny_model_dir}", "--out", str(tmp_path)],
    )
    assert res.exit_code == 2
    assert "lacks" in res.output


def test_config_rejects_layers_beyond_the_model(tiny_model_dir, data_dir, tmp_path):
    cfg = _tiny_config(tiny_model_dir, data_dir)
    from dataclasses import replace

    with pytest.raises(ValueError, match="exceed"):
        run_study(replace(cfg, layers=(0, 7)), root=tmp_path)
