from __future__ import annotations

import pytest

from spillover.studies.filtering import FilterExperimentConfig, epoch_matched_steps


def test_filter_experiment_config_validates():
    assert FilterExperimentConfig(fraction=0.5, fractions=(0.25,)).all_fractions == (0.25, 0.5)
    with pytest.raises(ValueError, match="unknown filter methods"):
        FilterExperimentConfig(methods=("geometry", "oracle"))
    with pytest.raises(ValueError, match="fractions"):
        FilterExperimentConfig(fractions=(1.0,))
    # k=0 would select no toxic latent, and the scoring step would blame the corpora instead.
    with pytest.raises(ValueError, match=r"toxic_k .* must be >= 1 or unset, got 0"):
        FilterExperimentConfig(toxic_k=0)


def test_epoch_matched_steps_scale_with_the_share_kept(tmp_path):
    full, half, one = tmp_path / "full.jsonl", tmp_path / "half.jsonl", tmp_path / "one.jsonl"
    full.write_text("{}\n" * 1000)
    half.write_text("{}\n" * 500 + "\n")
    one.write_text("{}\n")
    assert epoch_matched_steps(120, full, full) == 120
    assert epoch_matched_steps(120, half, full) == 60
    assert epoch_matched_steps(120, one, full) == 1
    with pytest.raises(ValueError, match="schedule"):
        FilterExperimentConfig(schedule="epoch")  # type: ignore[arg-type]
