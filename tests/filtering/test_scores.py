from __future__ import annotations

import math

import pytest
import torch

from spillover.filtering.scores import (
    diff_of_means_direction,
    max_cosine_to_toxic,
    nearest_toxic_cosine,
    persona_projection,
    toxic_activation,
    toxic_subspace,
)


def _decoder() -> torch.Tensor:
    # 4 features in 3-D: f0 toxic (e0), f1 at 60 degrees from it, f2 orthogonal, f3 = -e0 (antipodal).
    return torch.tensor(
        [
            [2.0, 0.0, 0.0],
            [0.5, math.sqrt(3) / 2, 0.0],
            [0.0, 0.0, 3.0],
            [-1.0, 0.0, 0.0],
        ]
    )


def test_max_cosine_of_toxic_feature_with_itself_is_one():
    cos = max_cosine_to_toxic(_decoder(), [0])
    assert cos.tolist() == pytest.approx([1.0, 0.5, 0.0, -1.0], abs=1e-6)


def test_max_cosine_takes_the_nearest_of_several_toxic_features():
    cos = max_cosine_to_toxic(_decoder(), [0, 2])
    assert cos.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0], abs=1e-6)


def test_nearest_toxic_cosine_is_activation_weighted_mean_of_active_features():
    acts = torch.tensor(
        [
            [0.0, 1.0, 0.0, 0.0],  # only the 60-degree neighbour: 0.5
            [0.0, 0.0, 2.0, 0.0],  # only the orthogonal feature: 0
            [0.0, 3.0, 1.0, 0.0],  # (3 * 0.5 + 1 * 0) / 4
            [0.0, 0.0, 0.0, 0.0],  # nothing active: 0
            [1.0, 0.0, 0.0, 1.0],  # (1 * 1 + 1 * -1) / 2
        ]
    )
    scores = nearest_toxic_cosine(acts, _decoder(), [0])
    assert scores.tolist() == pytest.approx([0.5, 0.0, 0.375, 0.0, 0.0], abs=1e-6)


def test_nearest_toxic_cosine_threshold_and_exclusion():
    acts = torch.tensor([[4.0, 0.05, 1.0, 0.0]])
    assert nearest_toxic_cosine(acts, _decoder(), [0]).item() == pytest.approx(
        (4.0 + 0.05 * 0.5) / 5.05, abs=1e-6
    )
    high = nearest_toxic_cosine(acts, _decoder(), [0], active_threshold=0.1)
    assert high.item() == pytest.approx(4.0 / 5.0, abs=1e-6)
    excluded = nearest_toxic_cosine(acts, _decoder(), [0], exclude_toxic=True)
    assert excluded.item() == pytest.approx(0.05 * 0.5 / 1.05, abs=1e-6)


def test_nearest_toxic_cosine_is_invariant_to_decoder_row_scale():
    acts = torch.rand(6, 4)
    w = _decoder()
    scaled = w * torch.tensor([[3.0], [0.1], [7.0], [2.0]])
    assert torch.allclose(
        nearest_toxic_cosine(acts, w, [0]), nearest_toxic_cosine(acts, scaled, [0]), atol=1e-6
    )


def test_toxic_activation_sums_only_toxic_features():
    acts = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 0.5, 0.0]])
    assert toxic_activation(acts, [0, 2]).tolist() == pytest.approx([4.0, 0.5])


def test_toxic_subspace_projection_norm_and_centering():
    w = _decoder()
    x = torch.tensor([[3.0, 4.0, 0.0], [0.0, 4.0, 0.0], [1.0, 0.0, 2.0]])
    # span{e0}: |x0|
    assert toxic_subspace(x, w, [0]).tolist() == pytest.approx([3.0, 0.0, 1.0], abs=1e-6)
    # span{e0, e2}: norm of (x0, x2); feature 3 (= -e0) adds nothing to the span
    assert toxic_subspace(x, w, [0, 2, 3]).tolist() == pytest.approx([3.0, 0.0, math.sqrt(5)], abs=1e-5)
    # A dependent direction before an independent one must not drop part of the span.
    w_dep = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert toxic_subspace(torch.tensor([[0.0, 1.0, 1.0]]), w_dep, [0, 1, 2]).tolist() == pytest.approx(
        [math.sqrt(2)], abs=1e-5
    )
    centred = toxic_subspace(x, w, [0], center_D=torch.tensor([1.0, 0.0, 0.0]))
    assert centred.tolist() == pytest.approx([2.0, 1.0, 0.0], abs=1e-6)


def test_persona_projection_on_difference_of_means():
    harmful = torch.tensor([[2.0, 1.0], [4.0, 1.0]])
    benign = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    d = diff_of_means_direction(harmful, benign)
    assert d.tolist() == pytest.approx([1.0, 0.0])
    x = torch.tensor([[1.0, 9.0], [-2.0, 0.0], [5.0, -3.0]])
    assert persona_projection(x, d).tolist() == pytest.approx([1.0, -2.0, 5.0])
    assert persona_projection(x, 10 * d, center_D=torch.tensor([1.0, 1.0])).tolist() == pytest.approx(
        [0.0, -3.0, 4.0]
    )


def test_scores_reject_bad_inputs():
    with pytest.raises(ValueError, match="toxic feature indices"):
        max_cosine_to_toxic(_decoder(), [4])
    with pytest.raises(ValueError, match="no toxic features"):
        toxic_activation(torch.zeros(2, 4), [])
    with pytest.raises(ValueError, match="4 rows"):
        nearest_toxic_cosine(torch.zeros(2, 5), _decoder(), [0])
    with pytest.raises(ValueError, match="same mean"):
        diff_of_means_direction(torch.ones(2, 3), torch.ones(1, 3))
