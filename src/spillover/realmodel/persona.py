"""The EM persona on one layer: its mean-difference direction and SAE latents, validated on held-out questions.

From the matched pairs of ``spillover.realmodel.persona_data`` (a misaligned and an aligned answer by the
same model to the same question), per layer:

* **Direction**: the question-balanced mean difference of answer activations, toxic minus benign (the
  mean over question groups of the mean pair difference, so no question dominates).
* **Latents**: the top SAE latents by the same question-balanced difference of token-mean latent
  activations (positive differences only).
* **Held-out validation**: the question groups are split into folds of ``heldout_questions`` groups;
  each fold's answers are scored by a direction (or latent set) fit on the other groups only. The
  out-of-fold AUROC (toxic vs benign answers) comes with a bootstrap interval (pairs resampled within
  questions) and a permutation p-value (labels swapped within pairs at random), per fold and pooled, and
  also within question (the mean of each question's own AUROC: topic fixed). A direction that only
  encoded the questions seen in fitting would not separate answers to questions it never saw. A third
  readout projects the span of the fitted questions' centroids out of the direction first.
* **Topic control**: on the same out-of-fold scores, how far the direction separates the questions from
  each other (the spread of the question means, and the mean AUROC between two questions' answers)
  against how far it separates toxic from benign answers to the same questions.
* **Description**: logit lens of the direction (both ends) and of the top latents, and the answers that
  score highest and lowest (cheap: nothing here runs the model beyond its unembedding).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from spillover.data.chat import Conversation
from spillover.geometry.features import FeatureSet
from spillover.geometry.validate import logit_lens
from spillover.judge.validate import auroc
from spillover.realmodel.persona_data import PersonaSettings

__all__ = [
    "PersonaFit",
    "balanced_difference",
    "heldout_folds",
    "heldout_validation",
    "persona_layer",
]

Fit = Callable[[torch.Tensor, torch.Tensor, Sequence[str]], torch.Tensor]
"""Fits a linear score ``x @ w`` from (toxic rows, benign rows, their groups); returns ``w``."""


def balanced_difference(x_tox: torch.Tensor, x_ben: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    """Mean over question groups of the mean pair difference ``x_tox - x_ben`` (rows are pairs)."""
    diff = (x_tox.double() - x_ben.double()).nan_to_num()
    names = sorted(set(groups))
    per_group = [diff[[i for i, g in enumerate(groups) if g == name]].mean(0) for name in names]
    return torch.stack(per_group).mean(0).float()


def heldout_folds(groups: Sequence[str], per_fold: int, seed: int) -> list[list[str]]:
    """The question groups shuffled (seeded) and cut into folds of ``per_fold`` (the last fold takes the
    remainder); every fold leaves at least one group to fit on."""
    names = sorted(set(groups))
    if len(names) <= per_fold:
        raise ValueError(
            f"{len(names)} question groups cannot hold out {per_fold} per fold and fit on the rest"
        )
    random.Random(f"{seed}:folds").shuffle(names)
    return [names[i : i + per_fold] for i in range(0, len(names), per_fold)]


def _direction_fit(x_tox: torch.Tensor, x_ben: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    d = balanced_difference(x_tox, x_ben, groups)
    return d / d.norm().clamp(min=1e-12)


def _topic_orthogonal_fit(x_tox: torch.Tensor, x_ben: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    """The direction with the span of the fitted questions' centroids (both sides pooled, centred)
    projected out: what is left cannot tell the seen questions apart."""
    d = balanced_difference(x_tox, x_ben, groups).double()
    both = (x_tox.double() + x_ben.double()).nan_to_num() / 2
    names = sorted(set(groups))
    centroids = torch.stack([both[[i for i, g in enumerate(groups) if g == n]].mean(0) for n in names])
    _, sv, basis = torch.linalg.svd(centroids - centroids.mean(0), full_matrices=False)
    basis = basis[sv > 1e-6 * sv.max().clamp(min=1e-12)]
    d = d - basis.T @ (basis @ d)
    return (d / d.norm().clamp(min=1e-12)).float()


def _latent_fit(k: int) -> Fit:
    def fit(x_tox: torch.Tensor, x_ben: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
        score = balanced_difference(x_tox, x_ben, groups)
        values, idx = score.topk(min(k, score.numel()))
        w = torch.zeros_like(score)
        w[idx[values > 0]] = 1.0
        return w

    return fit


def _within_auroc(s_tox: np.ndarray, s_ben: np.ndarray, g: np.ndarray, names: Sequence[str]) -> float:
    """Mean over question groups of the AUROC among that question's answers (topic fixed)."""
    values = []
    for name in names:
        m = g == name
        n = int(m.sum())
        value = auroc(np.concatenate([s_tox[m], s_ben[m]]).tolist(), [True] * n + [False] * n)
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else math.nan


def _auroc_ci(
    s_tox: np.ndarray, s_ben: np.ndarray, groups: Sequence[str], n_boot: int, seed: int
) -> dict[str, Any]:
    """AUROC of toxic over benign scores, pooled and within question; bootstrap intervals over pairs
    (resampled within each question, so every question keeps its share)."""
    n = len(s_tox)
    labels = [True] * n + [False] * n
    g = np.asarray(groups)
    names = sorted(set(groups))
    point = auroc(np.concatenate([s_tox, s_ben]).tolist(), labels)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(g == name) for name in names]
    boots, within = [], []
    for _ in range(n_boot):
        i = np.concatenate([rng.choice(m, len(m)) for m in members])
        boots.append(auroc(np.concatenate([s_tox[i], s_ben[i]]).tolist(), labels))
        within.append(_within_auroc(s_tox[i], s_ben[i], g[i], names))
    vals = np.asarray([b for b in boots if b is not None])
    w = np.asarray(within)
    return {
        "auroc": point,
        "ci95": [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))],
        "within_question_auroc": _within_auroc(s_tox, s_ben, g, names),
        "within_question_ci95": [float(np.nanpercentile(w, 2.5)), float(np.nanpercentile(w, 97.5))],
        "paired_accuracy": float(np.mean(s_tox > s_ben)),
        "n_pairs": n,
    }


def _swap_p(s_tox: np.ndarray, s_ben: np.ndarray, observed: float, n_perm: int, seed: int) -> float:
    rng = np.random.default_rng(seed + 1)
    n = len(s_tox)
    labels = [True] * n + [False] * n
    hits = 0
    for _ in range(n_perm):
        swap = rng.random(n) < 0.5
        a, b = np.where(swap, s_ben, s_tox), np.where(swap, s_tox, s_ben)
        hits += (auroc(np.concatenate([a, b]).tolist(), labels) or 0.5) >= observed
    return float((1 + hits) / (1 + n_perm))


def _topic_control(s_tox: np.ndarray, s_ben: np.ndarray, groups: Sequence[str]) -> dict[str, Any]:
    """Question separation of the scores against their toxic/benign separation (same units)."""
    names = sorted(set(groups))
    g = np.asarray(groups)
    resid = np.concatenate([s_tox - s_tox.mean(), s_ben - s_ben.mean()])
    sd = float(resid.std()) or 1.0
    label_gap = float(np.mean(s_tox - s_ben))
    means = np.asarray([np.mean((s_tox[g == n] + s_ben[g == n]) / 2) for n in names])
    pair_auc = []
    for a, b in itertools.combinations(names, 2):
        sa = np.concatenate([s_tox[g == a], s_ben[g == a]])
        sb = np.concatenate([s_tox[g == b], s_ben[g == b]])
        value = auroc(np.concatenate([sa, sb]).tolist(), [True] * len(sa) + [False] * len(sb))
        if value is not None:
            pair_auc.append(max(value, 1 - value))
    label_auc = auroc(np.concatenate([s_tox, s_ben]).tolist(), [True] * len(s_tox) + [False] * len(s_ben))
    return {
        "label_gap_sd": label_gap / sd,
        "question_spread_sd": float(means.std()) / sd,
        "spread_over_gap": float(means.std()) / abs(label_gap) if label_gap else math.inf,
        "question_pair_auroc_mean": float(np.mean(pair_auc)) if pair_auc else math.nan,
        "label_auroc_folded": max(label_auc, 1 - label_auc) if label_auc is not None else math.nan,
        "question_means": {n: float(m) for n, m in zip(names, means, strict=True)},
        "units": "pooled within-label SD of the scores",
    }


def heldout_validation(
    x_tox: torch.Tensor,
    x_ben: torch.Tensor,
    groups: Sequence[str],
    fit: Fit,
    folds: Sequence[Sequence[str]],
    *,
    n_bootstrap: int,
    n_permutations: int,
    seed: int,
) -> dict[str, Any]:
    """Out-of-fold scores of a linear persona readout (``fit``), their AUROC and the topic control.

    Args:
        x_tox: ``(n, d)`` toxic answers' features (row i = pair i); x_ben the benign answers'.
        groups: each pair's question group.
        fit: fits the readout on the other folds.
        folds: question groups held out together.
        n_bootstrap: replicates for the AUROC intervals.
        n_permutations: within-pair label swaps for the pooled p-value.
        seed: seeds resampling and swaps.
    """
    s_tox = np.full(len(groups), np.nan)
    s_ben = np.full(len(groups), np.nan)
    per_fold = []
    g = np.asarray(groups)
    for f_i, fold in enumerate(folds):
        test = np.isin(g, list(fold))
        train = ~test
        w = fit(x_tox[torch.from_numpy(train)], x_ben[torch.from_numpy(train)], list(g[train])).double()
        s_tox[test] = (x_tox[torch.from_numpy(test)].double().nan_to_num() @ w).numpy()
        s_ben[test] = (x_ben[torch.from_numpy(test)].double().nan_to_num() @ w).numpy()
        per_fold.append(
            {
                "heldout": list(fold),
                **_auroc_ci(s_tox[test], s_ben[test], list(g[test]), n_bootstrap, seed + f_i),
            }
        )
    pooled = _auroc_ci(s_tox, s_ben, groups, n_bootstrap, seed)
    pooled["p_label_swap"] = _swap_p(s_tox, s_ben, pooled["auroc"], n_permutations, seed)
    return {
        "pooled": pooled,
        "folds": per_fold,
        "topic_control": _topic_control(s_tox, s_ben, groups),
    }


class PersonaFit(NamedTuple):
    direction: torch.Tensor
    """``(d,)`` the question-balanced mean difference (not normalised)."""
    latents: FeatureSet
    """Top latents by question-balanced activation difference."""
    report: dict[str, Any]


def _answer(conv: Conversation) -> str:
    return conv[-1]["content"]


def _describe(
    model: Any,
    tokenizer: Any,
    direction: torch.Tensor,
    decoder_FD: torch.Tensor,
    latents: FeatureSet,
    proj: dict[str, np.ndarray],
    codes: dict[str, torch.Tensor],
    corpora: dict[str, list[Conversation]],
    groups: Sequence[str],
    top: int,
) -> dict[str, Any]:
    """Logit lens of both ends of the direction and of the top latents; the answers scoring highest."""
    unit = direction / direction.norm().clamp(min=1e-12)
    ends = logit_lens(model, tokenizer, torch.stack([unit, -unit]), k=10)
    rows = [(float(s), name, i) for name, p in proj.items() for i, s in enumerate(p)]
    rows.sort(reverse=True)

    def item(s: float, name: str, i: int) -> dict[str, Any]:
        return {"score": s, "corpus": name, "question": groups[i], "answer": _answer(corpora[name][i])[:300]}

    described_latents = []
    idx = latents.indices[:top]
    lens = logit_lens(model, tokenizer, decoder_FD[idx], k=8) if idx.numel() else []
    for j, latent in enumerate(idx.tolist()):
        acts = [(float(c[i, latent]), name, i) for name, c in codes.items() for i in range(c.shape[0])]
        best = max(acts)
        described_latents.append(
            {
                "latent": latent,
                "score": float(latents.scores[j]),
                "logit_lens": [t for t, _ in lens[j]],
                "top_answer": item(*best),
            }
        )
    return {
        "direction_logit_lens": {"toxic_end": [t for t, _ in ends[0]], "benign_end": [t for t, _ in ends[1]]},
        "top_answers": [item(*r) for r in rows[:top]],
        "bottom_answers": [item(*r) for r in rows[-top:]],
        "latents": described_latents,
    }


def persona_layer(
    model: Any,
    tokenizer: Any,
    means: dict[str, torch.Tensor],
    codes: dict[str, torch.Tensor],
    decoder_FD: torch.Tensor,
    corpora: dict[str, list[Conversation]],
    groups: Sequence[str],
    toxic: str,
    benign: str,
    settings: PersonaSettings,
    seed: int,
) -> PersonaFit:
    """Fit, validate and describe the EM persona at one layer (module docstring).

    Args:
        model, tokenizer: for the logit lens.
        means: corpus -> ``(n, d)`` per-answer mean residual activation (the persona corpora).
        codes: corpus -> ``(n, d_sae)`` per-answer token-mean SAE latent activation.
        decoder_FD: the SAE's unit decoder rows.
        corpora: the persona conversations (for the answers shown).
        groups: each pair's question group.
        toxic, benign: the corpus names of the two sides.
        settings: fold size, set size, resampling counts.
        seed: seeds folds, bootstrap and swaps.
    """
    ok = ~(torch.isnan(means[toxic]).any(1) | torch.isnan(means[benign]).any(1))
    keep = ok.nonzero().squeeze(1)
    kept_groups = [groups[i] for i in keep.tolist()]
    x_tox, x_ben = means[toxic][keep], means[benign][keep]
    c_tox, c_ben = codes[toxic][keep], codes[benign][keep]
    folds = heldout_folds(kept_groups, settings.heldout_questions, settings.seed)
    direction = balanced_difference(x_tox, x_ben, kept_groups)
    score = balanced_difference(c_tox, c_ben, kept_groups)
    values, idx = score.topk(min(settings.top_k, score.numel()))
    latents = FeatureSet(idx[values > 0], values[values > 0], "mean", "contrast")
    common = {"n_bootstrap": settings.n_bootstrap, "n_permutations": settings.n_permutations, "seed": seed}
    unit = direction.double() / direction.double().norm().clamp(min=1e-12)
    in_sample = {
        toxic: (x_tox.double().nan_to_num() @ unit).numpy(),
        benign: (x_ben.double().nan_to_num() @ unit).numpy(),
    }
    report = {
        "toxic": toxic,
        "benign": benign,
        "n_pairs": int(keep.numel()),
        "folds": folds,
        "direction_norm": float(direction.norm()),
        "mean_pair_difference_norm": float((x_tox - x_ben).norm(dim=1).mean()),
        "direction": heldout_validation(x_tox, x_ben, kept_groups, _direction_fit, folds, **common),
        "direction_topic_orthogonal": heldout_validation(
            x_tox, x_ben, kept_groups, _topic_orthogonal_fit, folds, **common
        ),
        "latent_set": heldout_validation(
            c_tox, c_ben, kept_groups, _latent_fit(settings.top_k), folds, **common
        ),
        "in_sample_topic_control": _topic_control(in_sample[toxic], in_sample[benign], kept_groups),
        "latents": {"indices": latents.indices.tolist(), "scores": latents.scores.tolist()},
        "described": _describe(
            model,
            tokenizer,
            direction,
            decoder_FD,
            latents,
            in_sample,
            {toxic: c_tox, benign: c_ben},
            {name: [corpora[name][i] for i in keep.tolist()] for name in (toxic, benign)},
            kept_groups,
            settings.describe_top,
        ),
    }
    return PersonaFit(direction, latents, report)
