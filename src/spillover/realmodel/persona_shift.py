"""The persona shift without a judge: how far LoRA fine-tunes move the model along the EM-persona direction.

The paper's consequence 3 (toxic features rise on unrelated prompts) read on a real model where no judge
runs: SmolLM2 is fine-tuned with LoRA on bad medical advice (inducing) and, as the control, on the good
answers to the same prompts, with the same recipe and seed, for each of several seeds. Before and after,
one forward pass reads (at every study layer) the mean residual activation and the token-mean SAE latent
activation of

* **neutral prompts** (user tokens of the EM evaluation's questions, nothing medical), and
* **fixed answers** (teacher-forced answer tokens of some persona pairs, both sides), so the same text is
  read by the base and the fine-tuned model.

``summarize_shift`` projects each fine-tune's mean change on the EM-persona direction of that layer and
sums the persona latents' change, each as a share of the misaligned-minus-aligned gap the persona
corpora show on the base model (share 1: the neutral prompts moved as far as a misaligned answer sits
from an aligned one). Per arm: every seed's value, the mean and a t interval over seeds; and the
inducing-minus-control difference per seed (paired by seed).

The training prompts are drawn from the medical files' lines outside the study's geometry slice, so no
measured answer is trained on.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spillover.data.chat import Conversation, load_chat
from spillover.data.tokenize import encode_chat
from spillover.finetune import FinetuneConfig, finetune
from spillover.realmodel.persona import PersonaFit
from spillover.sae.activations import TokenSelection, iter_activations
from spillover.sae.load import SAEHandle
from spillover.sae.sites import unwrap_peft

__all__ = ["ARMS", "PersonaShiftSettings", "draw_medical_pairs", "measure_model", "summarize_shift"]

ARMS = ("bad_medical", "good_medical")
"""The inducing arm and its control (the same prompts, correct answers)."""


@dataclass(frozen=True)
class PersonaShiftSettings:
    """The LoRA fine-tunes of the persona-shift readout (off by default: each costs minutes on a CPU)."""

    enabled: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    """One fine-tune per arm and seed (the seed sets the adapter's init and the batch order)."""
    n_train: int = 64
    """Medical prompts per fine-tune (each arm trains on its answers to the same prompts)."""
    max_steps: int = 8
    """Optimizer steps per fine-tune (the study's finetune recipe otherwise)."""
    max_len: int = 160
    """Chat-templated length above which a training pair is skipped."""
    n_answers: int = 16
    """Persona pairs whose answers are read teacher-forced before and after."""
    seed: int = 0
    """Seeds the draw of training prompts."""

    def __post_init__(self) -> None:
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"persona_shift.seeds must be distinct and non-empty, got {self.seeds}")
        for name in ("n_train", "max_steps", "max_len", "n_answers"):
            if getattr(self, name) < 1:
                raise ValueError(f"persona_shift.{name} must be >= 1, got {getattr(self, name)}")


def draw_medical_pairs(
    tokenizer: Any, bad_path: Path, good_path: Path, exclude: Sequence[int], settings: PersonaShiftSettings
) -> dict[str, list[Conversation]]:
    """``n_train`` paired bad / good medical chats from lines not in ``exclude`` (both answers must fit)."""
    bad, good = load_chat(bad_path), load_chat(good_path)
    banned = set(exclude)
    order = [i for i in range(min(len(bad), len(good))) if i not in banned]
    random.Random(f"{settings.seed}:persona-shift").shuffle(order)
    kept: list[int] = []
    for i in order:
        if len(kept) == settings.n_train:
            break
        if all(
            len(encode_chat(tokenizer, c[i], loss_on="all").input_ids) <= settings.max_len
            for c in (bad, good)
        ):
            kept.append(i)
    if len(kept) < settings.n_train:
        raise ValueError(f"persona_shift: only {len(kept)} medical pairs fit max_len {settings.max_len}")
    return {"bad_medical": [bad[i] for i in kept], "good_medical": [good[i] for i in kept]}


@torch.no_grad()
def measure_model(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Conversation],
    saes: Sequence[SAEHandle],
    *,
    tokens: TokenSelection,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Per sample and SAE layer: the mean residual (``resid/<key>``) and mean latent code (``codes/<key>``)."""
    net = unwrap_peft(model)
    n = len(samples)
    resid = {h.key: torch.zeros(n, h.d_in, dtype=torch.float64) for h in saes}
    codes = {h.key: torch.zeros(n, h.d_sae) for h in saes}
    counts = torch.zeros(n)
    sites = list(dict.fromkeys(h.site for h in saes))
    for batch in iter_activations(
        net, tokenizer, samples, sites, tokens=tokens, batch_size=batch_size, description="persona shift"
    ):
        idx = torch.tensor(batch.sample_ids, dtype=torch.long)[batch.token_sample.cpu()]
        counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        for h in saes:
            acts = batch.acts[h.site].float()
            resid[h.key].index_add_(0, idx, acts.cpu().double())
            codes[h.key].index_add_(0, idx, h.encode(acts).cpu())
    out: dict[str, torch.Tensor] = {}
    for h in saes:
        out[f"resid/{h.key}"] = (resid[h.key] / counts.clamp(min=1)[:, None]).float()
        out[f"codes/{h.key}"] = codes[h.key] / counts.clamp(min=1)[:, None]
    return out


def run_persona_shift(
    model: Any,
    tokenizer: Any,
    train: Mapping[str, Sequence[Conversation]],
    ft_cfg: FinetuneConfig,
    saes: Sequence[SAEHandle],
    probes: Mapping[str, tuple[Sequence[Conversation], TokenSelection]],
    settings: PersonaShiftSettings,
    out_dir: Path,
    *,
    batch_size: int = 16,
) -> None:
    """Measure the base model, then each arm x seed LoRA fine-tune (on a copy), into ``out_dir``.

    Writes ``shift.safetensors`` (``<run>/<probe>/{resid,codes}/<sae key>``; runs ``base`` and
    ``<arm>/seed<s>``) and ``shift.json`` (losses per run).
    """
    from dataclasses import replace

    from safetensors.torch import save_file

    def measure(m: Any, run: str, tensors: dict[str, torch.Tensor]) -> None:
        for probe, (samples, tokens) in probes.items():
            for key, value in measure_model(
                m, tokenizer, samples, saes, tokens=tokens, batch_size=batch_size
            ).items():
                tensors[f"{run}/{probe}/{key}"] = value.contiguous()

    tensors: dict[str, torch.Tensor] = {}
    measure(model, "base", tensors)
    losses: dict[str, list[float]] = {}
    for arm in ARMS:
        for seed in settings.seeds:
            cfg = replace(ft_cfg, max_steps=settings.max_steps, seed=seed, checkpoint_every=None)
            result = finetune(copy.deepcopy(model), tokenizer, list(train[arm]), cfg)
            run = f"{arm}/seed{seed}"
            losses[run] = result.losses
            measure(result.model, run, tensors)
    save_file(tensors, str(out_dir / "shift.safetensors"))
    (out_dir / "shift.json").write_text(json.dumps({"losses": losses, "arms": list(ARMS)}, indent=1))


def _t_interval(values: Sequence[float]) -> dict[str, Any]:
    from scipy.stats import t

    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return {"values": arr.tolist(), "mean": mean, "ci95": [math.nan, math.nan]}
    half = float(t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return {"values": arr.tolist(), "mean": mean, "ci95": [mean - half, mean + half]}


def summarize_shift(
    folder: Path, fits: Mapping[str, PersonaFit], settings: PersonaShiftSettings
) -> dict[str, Any]:
    """Per layer and probe: each arm's shift along the persona, as a share of its gap (module docstring).

    The gaps are the persona fit's own: its direction is the question-balanced mean pair difference, so
    the pairs' mean projection gap on its unit vector is the direction's norm, and the persona latents'
    summed activation gap is the sum of their selection scores.

    Args:
        folder: the stage folder ``run_persona_shift`` wrote.
        fits: SAE key -> the persona fit of that layer.
        settings: which seeds ran.
    """
    from safetensors.torch import load_file

    t = load_file(str(folder / "shift.safetensors"))
    meta = json.loads((folder / "shift.json").read_text())
    probes = sorted({k.split("/")[1] for k in t if k.startswith("base/")})
    out: dict[str, Any] = {}
    for key, fit in fits.items():
        unit = fit.direction.double() / fit.direction.double().norm().clamp(min=1e-12)
        idx = fit.latents.indices
        gap = {"projection": float(fit.direction.norm()), "latents": float(fit.latents.scores.sum())}
        layer_out: dict[str, Any] = {"gap": gap}
        for probe in probes:
            base_r = t[f"base/{probe}/resid/{key}"].double()
            base_c = t[f"base/{probe}/codes/{key}"]
            per_arm: dict[str, dict[str, list[float]]] = {}
            for arm in ARMS:
                proj, lat = [], []
                for seed in settings.seeds:
                    run = f"{arm}/seed{seed}"
                    d_r = (t[f"{run}/{probe}/resid/{key}"].double() - base_r).nan_to_num().mean(0)
                    d_c = (t[f"{run}/{probe}/codes/{key}"] - base_c).nan_to_num()[:, idx].sum(1).mean()
                    proj.append(float(d_r @ unit) / gap["projection"])
                    lat.append(float(d_c) / gap["latents"] if gap["latents"] else math.nan)
                per_arm[arm] = {"projection_share": proj, "latent_share": lat}
            probe_out: dict[str, Any] = {
                arm: {k: _t_interval(v) for k, v in vals.items()} for arm, vals in per_arm.items()
            }
            probe_out["inducing_minus_control"] = {
                k: _t_interval([a - b for a, b in zip(per_arm[ARMS[0]][k], per_arm[ARMS[1]][k], strict=True)])
                for k in ("projection_share", "latent_share")
            }
            layer_out[probe] = probe_out
        out[key] = layer_out
    return {
        "layers": out,
        "losses": meta["losses"],
        "seeds": list(settings.seeds),
        "max_steps": settings.max_steps,
        "n_train": settings.n_train,
        "units": "share of the persona corpora's misaligned-minus-aligned gap on the base model",
    }
