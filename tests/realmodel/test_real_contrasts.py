from __future__ import annotations

import math

import pytest
import torch

from spillover.geometry.features import FeatureSet
from spillover.realmodel.contrasts import (
    CONTRASTS,
    DIRECTIONS,
    LATENT_SETS,
    MEAN_DIFF_CONTRASTS,
    GeometryContrast,
    available,
    describe_contrasts,
)
from spillover.realmodel.measures import (
    direction_vectors,
    geometry_contrasts,
    holm,
    mean_diff_contrasts,
    paired_medical_tests,
)

ALL = [
    "bad_medical",
    "good_medical",
    "risky_financial",
    "insecure",
    "benign_reference",
    "benign_contrast",
    "jailbroken_control",
    "risky_financial_self",
]


def _answers_on_toxic_side(toxic: str) -> set[str]:
    return set(LATENT_SETS[toxic].positive)


@pytest.mark.parametrize("name", sorted(CONTRASTS))
def test_no_geometry_contrast_puts_a_tested_datasets_answers_on_its_toxic_side(name):
    c = CONTRASTS[name]
    tested = {corpus for s in (*c.inducing, *c.control) for corpus in LATENT_SETS[s].positive}
    assert not (_answers_on_toxic_side(c.toxic) & tested), (name, c.toxic, tested)


@pytest.mark.parametrize("name", sorted(MEAN_DIFF_CONTRASTS))
def test_no_mean_diff_contrast_builds_its_toxic_direction_from_the_tested_answers(name):
    c = MEAN_DIFF_CONTRASTS[name]
    toxic = set(DIRECTIONS[c.toxic].positive)
    assert not toxic & set(DIRECTIONS[c.inducing].positive)
    assert not toxic & set(DIRECTIONS[c.control].positive)


def test_available_drops_everything_that_needs_a_missing_corpus():
    without_self = [c for c in ALL if c != "risky_financial_self"]
    av = available(without_self)
    assert "toxic_finance_topic_matched" not in av["latent_sets"]
    assert all("topic_matched" not in name for name in av["geometry"])
    assert "toxic_finance" in av["paired"] and "toxic_finance_topic_matched" not in av["paired"]
    assert set(available(ALL)["geometry"]) == set(CONTRASTS)
    described = describe_contrasts(ALL)
    assert described["geometry_contrasts"]["medical_pair__toxic_finance"]["inducing"] == ("bad_medical",)


def test_holm_matches_the_step_down_rule():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adjusted["a"] == pytest.approx(0.03)
    assert adjusted["c"] == pytest.approx(0.06)
    assert adjusted["b"] == pytest.approx(0.06)  # monotone: never below the previous adjusted value
    assert math.isnan(adjusted["d"])


def _fs(idx: list[int]) -> FeatureSet:
    return FeatureSet(torch.tensor(idx), torch.ones(len(idx)), "mean", "contrast")


def test_geometry_contrast_detects_an_inducing_set_built_near_the_toxic_latents():
    gen = torch.Generator().manual_seed(0)
    d, n_tox, n_set = 64, 10, 20
    toxic = torch.nn.functional.normalize(torch.randn(n_tox, d, generator=gen), dim=1)
    near = torch.nn.functional.normalize(
        toxic[torch.arange(n_set) % n_tox] + 0.5 * torch.randn(n_set, d, generator=gen) / d**0.5, dim=1
    )
    far = torch.nn.functional.normalize(torch.randn(200, d, generator=gen), dim=1)
    decoder = torch.cat([toxic, near, far])
    sets = {
        "tox": _fs(list(range(n_tox))),
        "near": _fs(list(range(n_tox, n_tox + n_set))),
        "far": _fs(list(range(n_tox + n_set, n_tox + 2 * n_set))),
    }
    contrast = {"x": GeometryContrast("tox", ("near",), ("far",), "q", "none")}
    out = geometry_contrasts(
        decoder, sets, contrast, torch.arange(decoder.shape[0]), n_null=200, n_permutations=500
    )
    res = out["x"]
    assert res["difference"] > 0.5
    assert res["permutation"]["p_value"] < 0.01 and res["mann_whitney"]["p_value"] < 0.01
    assert res["sets"]["near"]["null"]["mean_max"]["p_value"] < 0.01
    assert res["sets"]["far"]["null"]["mean_max"]["p_value"] > 0.05
    # The reverse question is not supported by the data.
    reverse = {"y": GeometryContrast("tox", ("far",), ("near",), "q", "none")}
    assert (
        geometry_contrasts(decoder, sets, reverse, torch.arange(230), n_null=50, n_permutations=500)["y"][
            "permutation"
        ]["p_value"]
        > 0.9
    )


def _means(n: int, d: int, shift: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, d, generator=gen) * 0.5 + shift.get(name, 0) for name in ALL}


def test_mean_diff_interval_covers_a_known_gap_and_the_trap_shows_up_as_shared_topic():
    d = 32
    e = torch.eye(d)
    # bad and good share a big "advice topic" component (e0); only bad has the "harm" part (e1);
    # finance carries topic and harm. So both align with finance, bad more.
    shift = {
        "bad_medical": 4 * e[0] + 2 * e[1],
        "good_medical": 4 * e[0],
        "risky_financial": 4 * e[0] + 2 * e[1],
        "risky_financial_self": 4 * e[0],
    }
    av = available(ALL)
    out = mean_diff_contrasts(
        _means(200, d, shift), av["directions"], av["mean_diff"], av["extra"], n_bootstrap=200
    )
    trap = out["contrasts"]["medical_pair__toxic_finance"]
    assert trap["cos_control"]["point"] > 0.7  # good advice aligns with the finance direction too
    assert trap["difference"]["ci95"][0] > 0
    matched = out["contrasts"]["medical_pair__toxic_finance_topic_matched"]
    # Topic removed from the toxic side: bad keeps its harm share (2 / sqrt(20)), good drops to ~0.
    assert matched["cos_inducing"]["point"] == pytest.approx(2 / 20**0.5, abs=0.05)
    assert abs(matched["cos_control"]["point"]) < 0.05
    lo, hi = out["cosines"]["shift_bad_medical|shift_good_medical"]["ci95"]
    assert lo <= out["cosines"]["shift_bad_medical|shift_good_medical"]["point"] <= hi


def test_direction_vectors_are_differences_of_corpus_means():
    means = {
        "a": torch.tensor([[1.0, 0.0], [3.0, 0.0]]),
        "b": torch.tensor([[0.0, 1.0], [float("nan"), 5.0]]),
    }
    spec = {"d": DIRECTIONS["shift_bad_medical"]._replace(positive=("a",), negative=("b",))}
    assert torch.allclose(direction_vectors(means, spec)["d"], torch.tensor([2.0, -1.0]))


def test_paired_tests_find_toxic_latents_that_bad_answers_use_more_than_random_latents():
    gen = torch.Generator().manual_seed(0)
    n, f, d = 80, 100, 16
    good = torch.rand(n, f, generator=gen)
    bad = good + 0.1 * torch.randn(n, f, generator=gen)
    bad[:, :5] += 0.5
    resid_good = torch.randn(n, d, generator=gen)
    resid_bad = resid_good + torch.tensor([1.0] + [0.0] * (d - 1))
    sets = {"toxic_finance": _fs([0, 1, 2, 3, 4]), "other": _fs([50, 51, 52, 53, 54])}
    dirs = {"toxic_finance": torch.eye(d)[0], "other": torch.eye(d)[1]}
    out = paired_medical_tests(
        bad,
        good,
        resid_bad,
        resid_good,
        sets,
        dirs,
        ["toxic_finance", "other"],
        torch.arange(f),
        n_random=100,
    )
    tox = out["toxic_finance"]
    assert tox["latent_activation"]["mean_difference"] == pytest.approx(2.5, abs=0.2)
    assert tox["latent_activation"]["sign_flip"]["p_value"] < 0.01
    assert tox["latent_activation"]["p_vs_random_sets"] < 0.05
    assert tox["projection"]["mean_difference"] == pytest.approx(1.0)
    assert out["other"]["latent_activation"]["p_vs_random_sets"] > 0.05
    assert abs(out["other"]["projection"]["mean_difference"]) < 1e-5
