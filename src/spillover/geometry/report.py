"""From datasets to "how close are their features to toxic features?": the full geometry report.

``geometry_report`` scores every dataset (plus toxic, benign and reference corpora) under every SAE in
one early-stopped pass per batch, then per SAE/layer: selects the toxic latents and each dataset's
latents, measures decoder-cosine geometry against a random-latent-set null, the mean-difference
measure and the extra toxic-latent activation, tests inducing vs control datasets
(``spillover.geometry.compare``), validates every selected latent (logit lens, top contexts), and
computes the EM-risk score. The result is a JSON-ready dict (``geometry.json``);
``spillover.geometry.plots`` draws it.

Python::

    from spillover.geometry import GeometryConfig, geometry_report
    result = geometry_report(model, tokenizer, saes, {"insecure": a, "secure": b},
                             toxic=tox, benign=ben, pairs=[("insecure", "secure")])
    result.report["risk"]          # {dataset: score}
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from spillover.config import to_dict
from spillover.geometry.compare import compare_groups
from spillover.geometry.features import (
    Aggregate,
    FeatureSet,
    FeatureStats,
    Selection,
    dataset_features,
    score_datasets,
    toxic_features,
)
from spillover.geometry.risk import RISK_DEFINITION, RiskMeasure, default_risk_layers, risk_score
from spillover.geometry.similarity import (
    HIST_BINS,
    excess_toxic_activation,
    feature_geometry,
    mean_difference_score,
)
from spillover.geometry.stats import random_set_null
from spillover.geometry.validate import context_snippets, logit_lens
from spillover.sae.activations import Sample, TokenSelection
from spillover.sae.load import SAEHandle

__all__ = [
    "GeometryConfig",
    "GeometryResult",
    "geometry_report",
    "write_geometry_report",
]

log = logging.getLogger(__name__)

Role = Literal["inducing", "control", "dataset"]
TOXIC, BENIGN, REFERENCE = "__toxic__", "__benign__", "__reference__"


@dataclass(frozen=True)
class GeometryConfig:
    """How dataset features are selected and compared with toxic features."""

    tokens: TokenSelection = "assistant"
    """Which tokens of a conversation count: the assistant's answers, the user's turns, or all."""
    aggregate: Aggregate = "mean"
    """Per-latent dataset score: mean over tokens then samples; or per-sample max; or firing frequency."""
    selection: Selection = "contrast"
    """Dataset latents by contrast against the reference corpus, or by absolute score."""
    top_k: int | None = None
    """Dataset feature-set size (default: 1% of the SAE's latents, 5..100)."""
    toxic_top_k: int | None = None
    """Toxic feature-set size (default: like top_k)."""
    threshold: float = 0.3
    """Cosine above which a dataset/toxic pair counts as close."""
    n_null: int = 1000
    """Random latent sets drawn for the null."""
    n_permutations: int = 10000
    """Relabellings in permutation tests."""
    batch_size: int = 32
    """Samples per forward pass."""
    max_tokens: int | None = None
    """Cap on padded tokens per batch (rows x longest sample)."""
    max_len: int | None = None
    """Truncate samples to this many tokens (default: the model's context size)."""
    max_samples: int | None = None
    """Use at most this many samples of each dataset/corpus (first ones), for quick runs."""
    top_contexts: int = 5
    """Top-activating samples remembered per latent."""
    contexts_shown: int = 3
    """Top-activating contexts written per selected latent."""
    logit_lens_k: int = 10
    """Logit-lens tokens written per selected latent."""
    risk_measure: RiskMeasure = "mean_diff"
    """Which measure the EM-risk score uses (see spillover.geometry.risk)."""
    risk_layers: tuple[int, ...] = ()
    """Layers the risk score averages over (default: the middle analysed layer)."""
    seed: int = 0
    """Seeds the null draws and permutations."""

    def __post_init__(self) -> None:
        if not -1 <= self.threshold <= 1:
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {self.threshold}")
        for name in ("top_k", "toxic_top_k", "max_samples", "max_len", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if self.n_null < 10 or self.n_permutations < 100:
            raise ValueError("n_null must be >= 10 and n_permutations >= 100")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class GeometryResult(NamedTuple):
    report: dict[str, Any]
    """The JSON-ready report (what geometry.json holds)."""
    stats: dict[str, dict[str, FeatureStats]]
    """``{dataset or corpus: {sae key: FeatureStats}}`` (corpora under ``__toxic__`` etc.)."""
    toxic: dict[str, FeatureSet]
    """Toxic feature set per SAE key."""
    features: dict[str, dict[str, FeatureSet]]
    """``{dataset: {sae key: FeatureSet}}``."""


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _clean(obj: Any) -> Any:
    """NaN/inf to None so the report is strict JSON."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _roles_and_corpora(
    datasets: Mapping[str, Sequence[Sample]],
    toxic: Sequence[Sample],
    benign: Sequence[Sample],
    reference: Sequence[Sample] | None,
    roles: Mapping[str, Role] | None,
    pairs: Sequence[tuple[str, str]],
    max_samples: int | None,
) -> tuple[dict[str, Role], dict[str, Sequence[Sample]]]:
    """Every dataset's role, and every dataset and corpus cut to ``max_samples`` (checked non-empty)."""
    out: dict[str, Role] = dict(roles or {})
    for i, c in pairs:
        for name in (i, c):
            if name not in datasets:
                raise KeyError(
                    f"pair ({i}, {c}) names {name!r}, which is not among the datasets {sorted(datasets)}"
                )
        out.setdefault(i, "inducing")
        out.setdefault(c, "control")
    for name in datasets:
        out.setdefault(name, "dataset")
        if name in (TOXIC, BENIGN, REFERENCE):
            raise ValueError(f"dataset name {name!r} is reserved")
    cut = slice(None, max_samples)
    corpora: dict[str, Sequence[Sample]] = {name: list(s)[cut] for name, s in datasets.items()}
    corpora[TOXIC] = list(toxic)[cut]
    corpora[BENIGN] = list(benign)[cut]
    if reference is not None:
        corpora[REFERENCE] = list(reference)[cut]
    for name, samples in corpora.items():
        if not samples:
            raise ValueError(f"dataset {name!r} is empty")
    return out, corpora


class _Scored(NamedTuple):
    """What every layer's analysis reads: the data, their latent statistics and the settings."""

    model: nn.Module
    tokenizer: Any
    corpora: dict[str, Sequence[Sample]]
    stats: dict[str, dict[str, FeatureStats]]
    roles: dict[str, Role]
    names: list[str]
    pairs: Sequence[tuple[str, str]]
    cfg: GeometryConfig


def _dataset_entry(
    run: _Scored,
    h: SAEHandle,
    decoder: torch.Tensor,
    tox_fs: FeatureSet,
    pool: torch.Tensor,
    name: str,
    j: int,
) -> tuple[dict[str, Any], FeatureSet]:
    """One dataset at one layer: its latents, their geometry against the toxic set and its null."""
    cfg, k = run.cfg, h.key
    st, ref = run.stats[name][k], run.stats[REFERENCE][k]
    fs = dataset_features(st, ref, k=cfg.top_k, aggregate=cfg.aggregate, selection=cfg.selection)
    geo = feature_geometry(decoder, fs, tox_fs, threshold=cfg.threshold)
    null = random_set_null(
        decoder,
        tox_fs.indices,
        geo.n_dataset,
        observed_mean_max=geo.mean_max,
        observed_mean=geo.mean,
        pool=pool,
        n_draws=cfg.n_null,
        seed=cfg.seed + j,
    )
    entry = {
        "role": run.roles[name],
        "n_samples": st.n_samples,
        "n_tokens": st.n_tokens,
        "sae_fvu": st.fvu,
        "sae_l0": st.l0,
        "geometry": geo.as_dict(),
        "null": {m: r.as_dict() for m, r in null.items()},
        "mean_diff": mean_difference_score(st, ref, run.stats[TOXIC][k], run.stats[BENIGN][k]),
        "toxic_activation": excess_toxic_activation(st, ref, tox_fs, aggregate=cfg.aggregate),
        "features": _describe(run.model, run.tokenizer, h, fs, st, run.corpora[name], cfg),
    }
    return entry, fs


def _layer_report(run: _Scored, h: SAEHandle) -> tuple[dict[str, Any], FeatureSet, dict[str, FeatureSet]]:
    """One SAE/layer: the toxic latents, every dataset's entry and the inducing-vs-control tests."""
    cfg, k, stats = run.cfg, h.key, run.stats
    tox_fs = toxic_features(stats[TOXIC][k], stats[BENIGN][k], k=cfg.toxic_top_k, aggregate=cfg.aggregate)
    alive = torch.zeros(h.d_sae, dtype=torch.bool)
    for name in run.corpora:
        alive |= stats[name][k].alive
    if REFERENCE not in run.corpora:
        alive |= stats[REFERENCE][k].alive
    pool = alive.nonzero().squeeze(1)
    decoder = h.decoder().cpu()
    per_dataset: dict[str, Any] = {}
    feature_sets: dict[str, FeatureSet] = {}
    for j, name in enumerate(run.names):
        per_dataset[name], feature_sets[name] = _dataset_entry(run, h, decoder, tox_fs, pool, name, j)
    layer: dict[str, Any] = {
        "site": {"module_path": h.site.module_path, "io": h.site.io, "layer": h.layer},
        "sae": {"source": h.source, "d_sae": h.d_sae, "d_in": h.d_in},
        "toxic_features": _describe(
            run.model, run.tokenizer, h, tox_fs, stats[TOXIC][k], run.corpora[TOXIC], cfg
        ),
        "corpora": {
            name: {
                "n_samples": stats[c][k].n_samples,
                "n_tokens": stats[c][k].n_tokens,
                "sae_fvu": stats[c][k].fvu,
                "sae_l0": stats[c][k].l0,
            }
            for name, c in (("toxic", TOXIC), ("benign", BENIGN), ("reference", REFERENCE))
        },
        "datasets": per_dataset,
    }
    inducing = [n for n in run.names if run.roles[n] == "inducing"]
    controls = [n for n in run.names if run.roles[n] == "control"]
    if inducing and controls:
        layer["comparison"] = compare_groups(
            per_dataset, run.pairs, inducing, controls, n_permutations=cfg.n_permutations, seed=cfg.seed
        )
    return layer, tox_fs, feature_sets


def _risk_scores(
    layers_out: Mapping[str, Any], names: Sequence[str], measure: RiskMeasure, risk_layers: Sequence[str]
) -> dict[str, float]:
    risk: dict[str, float] = {}
    for name in names:
        per_layer = {
            k: {
                "mean_diff": layer["datasets"][name]["mean_diff"],
                "proximity": layer["datasets"][name]["geometry"]["proximity"],
                "null_mean_max": layer["datasets"][name]["null"]["mean_max"]["null_mean"],
            }
            for k, layer in layers_out.items()
        }
        risk[name] = risk_score(per_layer, measure, risk_layers)
    return risk


def geometry_report(
    model: nn.Module,
    tokenizer: Any,
    saes: Sequence[SAEHandle],
    datasets: Mapping[str, Sequence[Sample]],
    *,
    toxic: Sequence[Sample],
    benign: Sequence[Sample],
    reference: Sequence[Sample] | None = None,
    roles: Mapping[str, Role] | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    cfg: GeometryConfig | None = None,
    meta: Mapping[str, Any] | None = None,
) -> GeometryResult:
    """Score datasets, select features, measure their geometry against toxic features, and test.

    Args:
        model: an HF causal LM in eval mode.
        tokenizer: its tokenizer (with a chat template for conversations).
        saes: SAEs bound to sites of ``model`` (one per analysed layer).
        datasets: name -> samples (conversations; raw strings also work).
        toxic: toxic text or harmful answers (conversations or raw strings).
        benign: benign text or aligned answers, the toxic set's contrast.
        reference: the corpus dataset features are contrasted with (default: all datasets pooled).
        roles: ``inducing``/``control``/``dataset`` per dataset (default from ``pairs``, else ``dataset``).
        pairs: ``(inducing, control)`` dataset pairs for paired tests.
        cfg: selection and statistics settings.
        meta: extra facts recorded in the report (model name, SAE sources, paths...).

    Returns:
        The report and the statistics it was computed from.
    """
    cfg = cfg or GeometryConfig()
    all_roles, corpora = _roles_and_corpora(datasets, toxic, benign, reference, roles, pairs, cfg.max_samples)
    keys = [h.key for h in saes]
    # Checked before scoring: a risk layer without an SAE would otherwise fail after all the work.
    risk_layers = [f"layer_{layer}" for layer in cfg.risk_layers] or default_risk_layers(keys)
    missing = [layer for layer in risk_layers if layer not in keys]
    if missing:
        raise KeyError(f"risk layers {missing} were not analysed; analysed: {keys}")
    stats = score_datasets(
        model,
        tokenizer,
        corpora,
        saes,
        tokens=cfg.tokens,
        batch_size=cfg.batch_size,
        max_tokens=cfg.max_tokens,
        max_len=cfg.max_len,
        top_contexts=cfg.top_contexts,
    )
    names = list(datasets)
    if reference is None:
        stats[REFERENCE] = {k: FeatureStats.pooled([stats[n][k] for n in names], key=k) for k in keys}
    run = _Scored(model, tokenizer, corpora, stats, all_roles, names, pairs, cfg)
    layers_out: dict[str, Any] = {}
    tox_sets: dict[str, FeatureSet] = {}
    feat_sets: dict[str, dict[str, FeatureSet]] = {n: {} for n in names}
    for h in saes:
        layers_out[h.key], tox_sets[h.key], by_name = _layer_report(run, h)
        for name, fs in by_name.items():
            feat_sets[name][h.key] = fs
    report = {
        "config": to_dict(cfg),
        "meta": dict(meta or {}),
        "datasets": {n: {"role": all_roles[n]} for n in names},
        "pairs": [list(p) for p in pairs],
        "reference": "given" if reference is not None else "pooled datasets",
        "layers": layers_out,
        "risk": {
            "definition": RISK_DEFINITION,
            "measure": cfg.risk_measure,
            "layers": risk_layers,
            "scores": _risk_scores(layers_out, names, cfg.risk_measure, risk_layers),
        },
        "hist_bins": HIST_BINS,
    }
    return GeometryResult(_clean(report), stats, tox_sets, feat_sets)


def _describe(
    model: nn.Module,
    tokenizer: Any,
    handle: SAEHandle,
    fs: FeatureSet,
    stats: FeatureStats,
    samples: Sequence[Sample],
    cfg: GeometryConfig,
) -> list[dict[str, Any]]:
    """Per selected latent: its score, logit-lens tokens and top-activating contexts."""
    latents = fs.indices.tolist()
    if not latents:
        return []
    lens = (
        logit_lens(model, tokenizer, handle.decoder()[fs.indices], k=cfg.logit_lens_k)
        if cfg.logit_lens_k
        else [[] for _ in latents]
    )
    snippets = context_snippets(
        stats,
        latents,
        samples,
        tokenizer,
        tokens=cfg.tokens,
        max_len=cfg.max_len or _model_max_len(model),
        per_latent=cfg.contexts_shown,
    )
    return [
        {
            "index": int(latent),
            "score": float(score),
            "logit_lens": [[tok, round(v, 4)] for tok, v in lens[i]],
            "contexts": snippets.get(int(latent), []),
        }
        for i, (latent, score) in enumerate(zip(latents, fs.scores.tolist(), strict=True))
    ]


def _model_max_len(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) else None


def write_geometry_report(report: Mapping[str, Any], out_dir: str | Path, *, plots: bool = True) -> Path:
    """Write ``geometry.json`` (and the plots) into ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "geometry.json"
    path.write_text(json.dumps(report, indent=1, allow_nan=False))
    if plots:
        from spillover.geometry.plots import plot_report

        plot_report(report, out)
    return path
