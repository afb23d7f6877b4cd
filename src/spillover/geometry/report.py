"""From datasets to "how close are their features to toxic features?": the full geometry report.

``geometry_report`` scores every dataset (plus toxic, benign and reference corpora) under every SAE in
one early-stopped pass per batch, then per SAE/layer: selects the toxic latents and each dataset's
latents, measures decoder-cosine geometry against a random-latent-set null, the mean-difference
measure and the extra toxic-latent activation, tests inducing vs control datasets, validates every
selected latent (logit lens, top contexts), and computes the EM-risk score. The result is a JSON-ready
dict (``geometry.json``); ``spillover.geometry.plots`` draws it.

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
from spillover.geometry.stats import mann_whitney, permutation_test, random_set_null, sign_flip_test
from spillover.geometry.validate import context_snippets, logit_lens
from spillover.sae.activations import Sample, TokenSelection
from spillover.sae.load import SAEHandle

__all__ = [
    "GeometryConfig",
    "GeometryResult",
    "compare_groups",
    "geometry_report",
    "pooled_comparison",
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


def compare_groups(
    per_dataset: Mapping[str, Mapping[str, Any]],
    pairs: Sequence[tuple[str, str]],
    inducing: Sequence[str],
    controls: Sequence[str],
    *,
    n_permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Inducing vs control at one layer: feature-level and dataset-level tests.

    Feature level: the nearest-toxic cosines of all inducing datasets' latents vs all controls' latents
    (shared latents excluded, as in the paper), a permutation test stratified by pair and a Mann-Whitney
    U test. Dataset level: per pair, inducing minus control of ``proximity``, ``mean_max`` and
    ``mean_diff``, with an exact sign-flip test over pairs.
    """
    a_vals: list[float] = []
    b_vals: list[float] = []
    a_str: list[object] = []
    b_str: list[object] = []
    pair_of = {name: i for i, pair in enumerate(pairs) for name in pair}
    for name in inducing:
        vals = per_dataset[name]["geometry"]["max_cos"]
        a_vals += vals
        a_str += [pair_of.get(name, -1)] * len(vals)
    for name in controls:
        vals = per_dataset[name]["geometry"]["max_cos"]
        b_vals += vals
        b_str += [pair_of.get(name, -1)] * len(vals)
    out: dict[str, Any] = {
        "inducing": list(inducing),
        "controls": list(controls),
        "feature_level": {
            "mean_inducing": sum(a_vals) / len(a_vals) if a_vals else math.nan,
            "mean_control": sum(b_vals) / len(b_vals) if b_vals else math.nan,
            "permutation": permutation_test(
                a_vals, b_vals, strata_a=a_str, strata_b=b_str, n_permutations=n_permutations, seed=seed
            ).as_dict(),
            "mann_whitney": mann_whitney(a_vals, b_vals).as_dict(),
        },
    }
    if pairs:
        paired: dict[str, Any] = {}
        for metric in ("proximity", "mean_max", "mean_diff", "toxic_activation"):
            diffs = [_metric(per_dataset[i], metric) - _metric(per_dataset[c], metric) for i, c in pairs]
            paired[metric] = {"differences": diffs, "test": sign_flip_test(diffs, seed=seed).as_dict()}
        out["paired"] = paired
    return out


def _metric(entry: Mapping[str, Any], metric: str) -> float:
    if metric in ("proximity", "mean_max", "mean"):
        value = entry["geometry"][metric]
    else:
        value = entry[metric]
    return float(value) if value is not None else math.nan


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
    roles = dict(roles or {})
    for i, c in pairs:
        for name in (i, c):
            if name not in datasets:
                raise KeyError(
                    f"pair ({i}, {c}) names {name!r}, which is not among the datasets {sorted(datasets)}"
                )
        roles.setdefault(i, "inducing")
        roles.setdefault(c, "control")
    for name in datasets:
        roles.setdefault(name, "dataset")
        if name in (TOXIC, BENIGN, REFERENCE):
            raise ValueError(f"dataset name {name!r} is reserved")
    cut = slice(None, cfg.max_samples)
    corpora: dict[str, Sequence[Sample]] = {name: list(s)[cut] for name, s in datasets.items()}
    corpora[TOXIC] = list(toxic)[cut]
    corpora[BENIGN] = list(benign)[cut]
    if reference is not None:
        corpora[REFERENCE] = list(reference)[cut]
    for name, samples in corpora.items():
        if not samples:
            raise ValueError(f"dataset {name!r} is empty")
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
    if reference is None:
        stats[REFERENCE] = {k: FeatureStats.pooled([stats[n][k] for n in datasets], key=k) for k in keys}
    names = list(datasets)
    inducing = [n for n in names if roles[n] == "inducing"]
    controls = [n for n in names if roles[n] == "control"]
    layers_out: dict[str, Any] = {}
    tox_sets: dict[str, FeatureSet] = {}
    feat_sets: dict[str, dict[str, FeatureSet]] = {n: {} for n in names}
    for h in saes:
        k = h.key
        decoder = h.decoder().cpu()
        ref = stats[REFERENCE][k]
        tox_fs = toxic_features(stats[TOXIC][k], stats[BENIGN][k], k=cfg.toxic_top_k, aggregate=cfg.aggregate)
        tox_sets[k] = tox_fs
        alive = torch.zeros(h.d_sae, dtype=torch.bool)
        for name in corpora:
            alive |= stats[name][k].alive
        if REFERENCE not in corpora:
            alive |= stats[REFERENCE][k].alive
        pool = alive.nonzero().squeeze(1)
        per_dataset: dict[str, Any] = {}
        for j, name in enumerate(names):
            st = stats[name][k]
            fs = dataset_features(st, ref, k=cfg.top_k, aggregate=cfg.aggregate, selection=cfg.selection)
            feat_sets[name][k] = fs
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
            per_dataset[name] = {
                "role": roles[name],
                "n_samples": st.n_samples,
                "n_tokens": st.n_tokens,
                "sae_fvu": st.fvu,
                "sae_l0": st.l0,
                "geometry": geo.as_dict(),
                "null": {m: r.as_dict() for m, r in null.items()},
                "mean_diff": mean_difference_score(st, ref, stats[TOXIC][k], stats[BENIGN][k]),
                "toxic_activation": excess_toxic_activation(st, ref, tox_fs, aggregate=cfg.aggregate),
                "features": _describe(model, tokenizer, h, fs, st, corpora[name], cfg),
            }
        layer: dict[str, Any] = {
            "site": {"module_path": h.site.module_path, "io": h.site.io, "layer": h.layer},
            "sae": {"source": h.source, "d_sae": h.d_sae, "d_in": h.d_in},
            "toxic_features": _describe(model, tokenizer, h, tox_fs, stats[TOXIC][k], corpora[TOXIC], cfg),
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
        if inducing and controls:
            layer["comparison"] = compare_groups(
                per_dataset, pairs, inducing, controls, n_permutations=cfg.n_permutations, seed=cfg.seed
            )
        layers_out[k] = layer
    risk: dict[str, float] = {}
    for name in names:
        per_layer = {
            k: {
                "mean_diff": layers_out[k]["datasets"][name]["mean_diff"],
                "proximity": layers_out[k]["datasets"][name]["geometry"]["proximity"],
                "null_mean_max": layers_out[k]["datasets"][name]["null"]["mean_max"]["null_mean"],
            }
            for k in keys
        }
        risk[name] = risk_score(per_layer, cfg.risk_measure, risk_layers)
    report = {
        "config": to_dict(cfg),
        "meta": dict(meta or {}),
        "datasets": {n: {"role": roles[n]} for n in names},
        "pairs": [list(p) for p in pairs],
        "reference": "given" if reference is not None else "pooled datasets",
        "layers": layers_out,
        "risk": {
            "definition": RISK_DEFINITION,
            "measure": cfg.risk_measure,
            "layers": risk_layers,
            "scores": risk,
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


def pooled_comparison(
    reports: Sequence[Mapping[str, Any]],
    layer: str,
    *,
    n_permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Inducing vs control pooled over several reports (e.g. organism seeds), at one layer.

    Feature level: nearest-toxic cosines of inducing vs control latents, labels permuted within
    (report, pair) strata, plus Mann-Whitney U. Dataset level: per (report, pair) differences of
    ``proximity``, ``mean_max``, ``mean_diff`` and ``toxic_activation`` with an exact sign-flip test.
    """
    a_vals: list[float] = []
    b_vals: list[float] = []
    a_str: list[object] = []
    b_str: list[object] = []
    diffs: dict[str, list[float]] = {
        m: [] for m in ("proximity", "mean_max", "mean_diff", "toxic_activation")
    }
    for r, report in enumerate(reports):
        per_dataset = report["layers"][layer]["datasets"]
        for p, (ind, ctl) in enumerate(report["pairs"]):
            va = per_dataset[ind]["geometry"]["max_cos"]
            vb = per_dataset[ctl]["geometry"]["max_cos"]
            a_vals += va
            b_vals += vb
            a_str += [(r, p)] * len(va)
            b_str += [(r, p)] * len(vb)
            for m in diffs:
                diffs[m].append(_metric(per_dataset[ind], m) - _metric(per_dataset[ctl], m))
    return {
        "layer": layer,
        "n_reports": len(reports),
        "feature_level": {
            "mean_inducing": sum(a_vals) / len(a_vals) if a_vals else math.nan,
            "mean_control": sum(b_vals) / len(b_vals) if b_vals else math.nan,
            "permutation": permutation_test(
                a_vals, b_vals, strata_a=a_str, strata_b=b_str, n_permutations=n_permutations, seed=seed
            ).as_dict(),
            "mann_whitney": mann_whitney(a_vals, b_vals).as_dict(),
        },
        "paired": {
            m: {"differences": d, "test": sign_flip_test(d, seed=seed).as_dict()} for m, d in diffs.items()
        },
    }
