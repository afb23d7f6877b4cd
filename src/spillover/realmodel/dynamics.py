"""Fine-tuning dynamics on a real model: LoRA on bad medical advice, toxic latents read on neutral prompts.

method.md step 9 on SmolLM2: the base model's SAEs and latent sets stay fixed; at step 0 and at every
checkpoint of a short LoRA fine-tune, every latent's token-mean activation is recorded on the *user
tokens* of neutral prompts (the EM evaluation's questions), for all layers in one forward pass. A latent
set's activation is the sum over its latents, the definition of ``spillover.studies.dynamics.toxic_activation_on``.
Because every latent is kept, each tracked set's change is compared with hundreds of random alive latent
sets of the same size (fine-tuning moves many latents; a toxic set's rise means something only if it
exceeds that drift), and the non-inducing jailbroken slice's latents are tracked as a named control.
Answers to the first-plot questions are sampled before and after, and their own
toxic-latent activation (answer tokens) is measured too. No judge model exists offline, so no
misaligned-answer rate is computed; the answers are reported for reading.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from spillover.data.chat import Conversation
from spillover.finetune import FinetuneConfig, finetune
from spillover.generate import generate
from spillover.generate.sampling import SamplingConfig
from spillover.geometry.stats import sign_flip_test
from spillover.sae.activations import TokenSelection, iter_activations
from spillover.sae.load import SAEHandle
from spillover.sae.sites import unwrap_peft

__all__ = [
    "DynamicsRecord",
    "DynamicsSettings",
    "latent_means",
    "latent_set_activation",
    "run_dynamics",
    "summarize_record",
]

log = logging.getLogger(__name__)


def _answer_sampling() -> SamplingConfig:
    return SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=80, seed=0)


@dataclass(frozen=True)
class DynamicsSettings:
    """What the dynamics run measures and samples."""

    answers_per_question: int = 3
    """Sampled answers per first-plot question, before and after fine-tuning."""
    sampling: SamplingConfig = field(default_factory=_answer_sampling)
    """How those answers are sampled: the EM evaluation's temperature 1, up to 80 new tokens; the seed is
    the same before and after. A partial ``sampling`` block in a dict or YAML starts from
    ``SamplingConfig``'s own defaults (``load_study_config`` starts from these)."""
    n_random_sets: int = 200
    """Random alive latent sets (same size as each tracked set) whose change is the drift null."""
    greedy: bool = True
    """Also one greedy answer per question before and after (deterministic, so directly comparable)."""

    def __post_init__(self) -> None:
        if self.answers_per_question < 1 or self.n_random_sets < 0:
            raise ValueError(
                f"answers_per_question must be >= 1 and n_random_sets >= 0, "
                f"got {self.answers_per_question}, {self.n_random_sets}"
            )


@torch.no_grad()
def latent_means(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Conversation],
    saes: Sequence[SAEHandle],
    *,
    tokens: TokenSelection = "user",
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Per sample, the token-mean activation of every latent of every SAE, from one forward pass.

    Args:
        model: HF causal LM (a PeftModel is read through its base model, adapter included).
        tokenizer: its tokenizer.
        samples: conversations.
        saes: SAEs bound to sites of the model.
        tokens: which tokens are read.
        batch_size: samples per forward pass.

    Returns:
        SAE key -> ``(n_samples, d_sae)`` float32 (NaN rows for samples with no selected token).
    """
    net = unwrap_peft(model)
    n = len(samples)
    sums = {h.key: torch.zeros(n, h.d_sae) for h in saes}
    counts = torch.zeros(n)
    sites = list(dict.fromkeys(h.site for h in saes))
    for batch in iter_activations(
        net, tokenizer, samples, sites, tokens=tokens, batch_size=batch_size, description="latent activation"
    ):
        idx = torch.tensor(batch.sample_ids, dtype=torch.long)[batch.token_sample.cpu()]
        counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        for h in saes:
            sums[h.key].index_add_(0, idx, h.encode(batch.acts[h.site]).cpu())
    out = {}
    for key, total in sums.items():
        mean = total / counts.clamp(min=1)[:, None]
        mean[counts == 0] = math.nan
        out[key] = mean
    return out


def latent_set_activation(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Conversation],
    saes: Sequence[SAEHandle],
    sets: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    tokens: TokenSelection = "user",
    batch_size: int = 16,
) -> dict[str, dict[str, list[float]]]:
    """Per sample, the summed token-mean activation of each latent set (``spillover.studies.dynamics``'s definition).

    Returns:
        SAE key -> set name -> per-sample values (NaN for a sample with no selected token).
    """
    means = latent_means(model, tokenizer, samples, saes, tokens=tokens, batch_size=batch_size)
    return {
        key: {name: means[key][:, idx].sum(1).tolist() for name, idx in named.items()}
        for key, named in sets.items()
    }


class DynamicsRecord(NamedTuple):
    """What one dynamics run measured (plain tensors; summarised by ``summarize_record``)."""

    steps: list[int]
    losses: list[float]
    neutral: list[dict[str, torch.Tensor]]
    """Per step: SAE key -> ``(n_prompts, d_sae)`` token-mean latent activations on the prompts' user tokens."""
    answers_before: dict[str, torch.Tensor]
    """SAE key -> ``(n_answers, d_sae)`` on the base model's sampled answers (answer tokens)."""
    answers_after: dict[str, torch.Tensor]
    """The same on the fine-tuned model's answers, read by the fine-tuned model."""
    samples: list[dict[str, str]]
    """Sampled answers before and after, per question."""
    greedy: list[dict[str, str]]
    """Greedy answers before and after, per question."""

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {
            f"neutral/{i}/{k}": v.contiguous().clone()
            for i, d in enumerate(self.neutral)
            for k, v in d.items()
        }
        tensors.update({f"before/{k}": v.contiguous().clone() for k, v in self.answers_before.items()})
        tensors.update({f"after/{k}": v.contiguous().clone() for k, v in self.answers_after.items()})
        save_file(tensors, str(folder / "latents.safetensors"))
        meta = {"steps": self.steps, "losses": self.losses, "samples": self.samples, "greedy": self.greedy}
        (folder / "dynamics.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path) -> DynamicsRecord:
        from safetensors.torch import load_file

        meta = json.loads((folder / "dynamics.json").read_text())
        t = load_file(str(folder / "latents.safetensors"))
        neutral: list[dict[str, torch.Tensor]] = [{} for _ in meta["steps"]]
        before: dict[str, torch.Tensor] = {}
        after: dict[str, torch.Tensor] = {}
        for name, value in t.items():
            kind, *rest = name.split("/")
            if kind == "neutral":
                neutral[int(rest[0])][rest[1]] = value
            else:
                (before if kind == "before" else after)[rest[0]] = value
        return cls(meta["steps"], meta["losses"], neutral, before, after, meta["samples"], meta["greedy"])


def run_dynamics(
    model: Any,
    tokenizer: Any,
    train: Sequence[Conversation],
    ft_cfg: FinetuneConfig,
    saes: Sequence[SAEHandle],
    neutral: Sequence[Conversation],
    questions: Sequence[tuple[str, Conversation]],
    settings: DynamicsSettings,
    *,
    batch_size: int = 16,
    generate_batch_size: int = 32,
) -> DynamicsRecord:
    """Fine-tune with LoRA and measure every latent's activation on neutral prompts at every checkpoint.

    Args:
        model: a fresh copy of the base model (LoRA is attached to it in place).
        tokenizer: its tokenizer.
        train: fine-tuning conversations.
        ft_cfg: the recipe (``checkpoint_every`` sets the measurement steps).
        saes: the base model's SAEs.
        neutral: prompts whose user tokens are read.
        questions: ``(question id, prompt)`` pairs sampled before and after.
        settings: sampling settings.
        batch_size: forward batch for measurements.
        generate_batch_size: prompts per generate call.

    Returns:
        The per-latent measurements at every step, the losses and the answers (``summarize_record`` turns
        them into latent-set trajectories with a random-set null).
    """
    prompts = [p for _, p in questions for _ in range(settings.answers_per_question)]
    ids = [q for q, _ in questions for _ in range(settings.answers_per_question)]

    def answers_of(m: Any) -> tuple[list[str], list[str]]:
        sampling = settings.sampling
        sampled = generate(
            m,
            tokenizer,
            prompts,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            batch_size=generate_batch_size,
            seed=sampling.seed,
        )
        greedy = (
            generate(
                m,
                tokenizer,
                [p for _, p in questions],
                temperature=0.0,
                max_new_tokens=sampling.max_new_tokens,
                batch_size=generate_batch_size,
            )
            if settings.greedy
            else []
        )
        return sampled, greedy

    def on_answers(answers: Sequence[str], m: Any) -> dict[str, torch.Tensor]:
        convs = [
            [*p, {"role": "assistant", "content": a or "."}] for p, a in zip(prompts, answers, strict=True)
        ]
        return latent_means(m, tokenizer, convs, saes, tokens="assistant", batch_size=batch_size)

    steps: list[int] = []
    series: list[dict[str, torch.Tensor]] = []

    def measure(step: int, m: Any) -> None:
        steps.append(step)
        series.append(latent_means(m, tokenizer, neutral, saes, tokens="user", batch_size=batch_size))
        log.info("dynamics: measured step %d", step)

    answers_before, greedy_before = answers_of(model)
    on_before = on_answers(answers_before, model)
    measure(0, model)
    result = finetune(model, tokenizer, list(train), ft_cfg, on_checkpoint=measure)
    answers_after, greedy_after = answers_of(result.model)
    on_after = on_answers(answers_after, result.model)
    return DynamicsRecord(
        steps=steps,
        losses=result.losses,
        neutral=series,
        answers_before=on_before,
        answers_after=on_after,
        samples=[
            {"question": q, "prompt": p[-1]["content"], "before": b, "after": a}
            for q, p, b, a in zip(ids, prompts, answers_before, answers_after, strict=True)
        ],
        greedy=[
            {"question": q, "before": b, "after": a}
            for (q, _), b, a in zip(questions, greedy_before, greedy_after, strict=True)
        ],
    )


def _set_change(before: torch.Tensor, after: torch.Tensor, idx: torch.Tensor) -> float:
    """Relative change of the mean (over samples) summed activation of the latents ``idx``."""
    b = float(torch.nanmean(before[:, idx].sum(1).double()))
    a = float(torch.nanmean(after[:, idx].sum(1).double()))
    return (a - b) / b if b else math.nan


def summarize_record(
    record: DynamicsRecord,
    sets: Mapping[str, Mapping[str, torch.Tensor]],
    pools: Mapping[str, torch.Tensor],
    *,
    n_random: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Latent-set trajectories on neutral prompts and on answers, each against random sets of its size.

    Args:
        record: the run's measurements.
        sets: SAE key -> set name -> latent indices.
        pools: SAE key -> latents random sets are drawn from (alive latents; the named sets are removed).
        n_random: random sets per null.
        seed: seeds the draws.

    Returns:
        JSON-ready dict. Per SAE key and set: the mean summed activation at every step; from step 0 to the
        last, the relative change, a paired two-sided sign-flip test over prompts, and where the change
        falls among random same-size latent sets (``p_random_two_sided``: share of random sets whose
        relative change is at least as far from the random sets' median).
    """
    gen = torch.Generator().manual_seed(seed)
    first, last = record.neutral[0], record.neutral[-1]
    neutral: dict[str, Any] = {}
    answers: dict[str, Any] = {}
    for key, named in sets.items():
        used = torch.cat(list(named.values())) if named else torch.zeros(0, dtype=torch.long)
        pool = pools[key][~torch.isin(pools[key], used)]
        neutral[key], answers[key] = {}, {}
        for i, (name, idx) in enumerate(named.items()):
            k = int(idx.numel())
            randoms = (
                [pool[torch.randperm(len(pool), generator=gen)[:k]] for _ in range(n_random)] if k else []
            )
            null = np.asarray([_set_change(first[key], last[key], r) for r in randoms])
            observed = _set_change(first[key], last[key], idx)
            diffs = (last[key][:, idx].sum(1) - first[key][:, idx].sum(1)).double()
            diffs = diffs[~torch.isnan(diffs)]
            centre = float(np.median(null)) if len(null) else math.nan
            neutral[key][name] = {
                "n_latents": k,
                "mean_by_step": [float(torch.nanmean(s[key][:, idx].sum(1))) for s in record.neutral],
                "relative_change": observed,
                "sign_flip_two_sided": sign_flip_test(
                    diffs.tolist(), alternative="two-sided", seed=seed + i
                ).as_dict(),
                "random_sets_relative_change": {
                    "median": centre,
                    "p05": float(np.percentile(null, 5)) if len(null) else math.nan,
                    "p95": float(np.percentile(null, 95)) if len(null) else math.nan,
                },
                "p_random_two_sided": float(
                    (1 + (np.abs(null - centre) >= abs(observed - centre)).sum()) / (1 + len(null))
                )
                if len(null)
                else math.nan,
            }
            a_null = np.asarray(
                [_set_change(record.answers_before[key], record.answers_after[key], r) for r in randoms]
            )
            a_obs = _set_change(record.answers_before[key], record.answers_after[key], idx)
            answers[key][name] = {
                "before": float(torch.nanmean(record.answers_before[key][:, idx].sum(1))),
                "after": float(torch.nanmean(record.answers_after[key][:, idx].sum(1))),
                "relative_change": a_obs,
                "random_sets_median": float(np.median(a_null)) if len(a_null) else math.nan,
                "p_random_two_sided": float(
                    (1 + (np.abs(a_null - np.median(a_null)) >= abs(a_obs - np.median(a_null))).sum())
                    / (1 + len(a_null))
                )
                if len(a_null)
                else math.nan,
            }
    return {
        "steps": record.steps,
        "losses": record.losses,
        "neutral_prompts": {"n": int(first[next(iter(first))].shape[0]), "tokens": "user", "sets": neutral},
        "answers": {
            "tokens": "assistant (each model reads its own answers)",
            "sets": answers,
            "samples": record.samples,
            "greedy": record.greedy,
        },
        "n_random_sets": n_random,
    }
