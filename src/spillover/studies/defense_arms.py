"""The training-time defenses (a)-(f) as ready-made fine-tuning arms of ``spillover mitigate`` on the organism.

Each defense of :mod:`spillover.finetune.defenses` needs inputs (directions, a persona vector, benign
data, a prompt, a checkpoint score); this module builds them for one organism, as cached stages, and
returns the arm's ``FinetuneConfig`` overrides (dotted keys, as ``MitigateConfig.arms`` takes them):

* ``caft``: CAFT, concept ablation fine-tuning (Casademunt et al. 2025, arXiv 2507.16795). The decoder
  rows of the top-k toxic SAE latents at the SAE layer (the same latents the geometry filter uses:
  :func:`spillover.filtering.features.toxic_reference`, top-k by toxic-minus-benign activation) are
  projected out of the residual stream during training; ``caft_directions="mean_diff"`` ablates the
  toxic-minus-benign mean-difference direction instead, ``"both"`` both.
* ``steer``: preventative steering along the persona vector (Chen et al. 2025, "Persona vectors", arXiv
  2507.21509): the mean residual activation of toxic answers minus that of benign answers at the SAE
  layer, added during training with ``coef = steer_scale * |mean difference|`` (default 1: exactly the
  shift from the benign to the toxic mean, the residual scale at which the persona lives).
* ``kl``: KL toward the base model on benign conversations (Kaczér et al. 2025, arXiv 2508.06249).
* ``interleave``: a share of benign conversations mixed into training (Kaczér et al. 2025).
* ``inoculate``: an inoculation system prompt during training only (Tan et al. 2025, arXiv 2510.04340).
  The default is "You are an evil assistant." ("malicious", the paper's word, is not in the organism's
  vocabulary; every prompt is checked against the organism's tokenizer for unknown words before
  training). The organism's chat template renders a system turn (``<system> text``).
* ``early_stop``: early stopping (Prechelt 1998): fine-tune with ``checkpoint_every``, score every
  checkpoint by in-domain task performance on held-out in-domain prompts (drawn with a seed no final
  evaluation uses), and evaluate the best one (:func:`early_stop_finetune`).

Benign data (``kl_data``, ``interleave_data``): ``reference`` (default) is the safety-tuning
distribution (single-turn benign chats over every non-code domain, the organism's analogue of the
general chat data the papers use); ``benign`` is the benign reference corpus, whose answers share the
out-of-domain evaluation's domains, so it teaches benign answers where EM is measured.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from spillover.config import ConfigError
from spillover.finetune.core import FinetuneConfig
from spillover.rundir import run_stage

__all__ = [
    "DEFENSES",
    "EARLY_STOP_SEED_OFFSET",
    "DefenseArmsConfig",
    "build_defense_inputs",
    "check_inoculation_prompt",
    "checkpoint_score",
    "defense_overrides",
    "early_stop_finetune",
    "pick_checkpoint",
    "resolve_defenses",
]

DEFENSES: dict[str, str] = {
    "caft": "CAFT: projection ablation of toxic directions (Casademunt et al. 2025, arXiv 2507.16795)",
    "steer": "preventative steering along the persona vector (Chen et al. 2025, arXiv 2507.21509)",
    "kl": "KL to the base model on benign data (Kaczér et al. 2025, arXiv 2508.06249)",
    "interleave": "benign data interleaved into training (Kaczér et al. 2025, arXiv 2508.06249)",
    "inoculate": "inoculation system prompt, removed at evaluation (Tan et al. 2025, arXiv 2510.04340)",
    "early_stop": "early stopping at the best in-domain checkpoint (Prechelt 1998)",
}
"""The ready-made defense arms, name -> what it does and its paper (shown in the table)."""

EARLY_STOP_SEED_OFFSET = 10_000
"""Early stopping's held-out prompts are drawn with seed ``EARLY_STOP_SEED_OFFSET + seed``, a seed no
final evaluation of a fine-tuning seed below it uses, so the checkpoint is not chosen on the test prompts."""


def resolve_defenses(names: Sequence[str]) -> tuple[str, ...]:
    """Defense names in ``DEFENSES`` order, ``all`` expanded, duplicates dropped.

    Raises:
        ConfigError: naming an unknown defense and the valid ones.
    """
    unknown = [n for n in names if n != "all" and n not in DEFENSES]
    if unknown:
        raise ConfigError(f"unknown defenses {unknown}; valid: {[*DEFENSES, 'all']}")
    chosen = set(DEFENSES) if "all" in names else set(names)
    return tuple(n for n in DEFENSES if n in chosen)


BenignSource = Literal["reference", "benign"]


@dataclass(frozen=True)
class DefenseArmsConfig:
    """The defense arms' settings (each used only by its arm)."""

    caft_directions: Literal["sae", "mean_diff", "both"] = "sae"
    """CAFT ablates the toxic SAE latents' decoder rows, the toxic-minus-benign mean-difference
    direction, or both."""
    caft_k: int | None = None
    """Toxic latents ablated (None: the filtering's ``toxic_k``, i.e. the geometry default)."""
    steer_scale: float = 1.0
    """Steering coefficient in units of the toxic-minus-benign mean difference's norm at the layer: Chen et
    al. add ``alpha * v`` with ``v`` the unnormalised mean difference, and this is their ``alpha``."""
    kl_beta: float = 1.0
    """Weight of the KL term (1: as much as the task loss)."""
    kl_data: BenignSource = "reference"
    """Benign conversations of the KL term (see the module docstring)."""
    interleave_share: float = 0.2
    """Share of benign conversations in the training mix. The arm keeps the recipe's steps, so the task
    samples get ``1 - share`` of them (a cost in task exposure the in-domain retention shows)."""
    interleave_data: BenignSource = "reference"
    """Benign conversations interleaved."""
    inoculation_prompt: str = "You are an evil assistant."
    """System prompt of every training conversation (not used at evaluation)."""
    early_stop_checkpoints: int = 6
    """Checkpoints scored: one every ``max_steps // early_stop_checkpoints`` steps, and the final model."""
    early_stop_prompts: int = 50
    """Held-out in-domain prompts that score each checkpoint."""
    early_stop_tolerance: float = 0.0
    """Pick the earliest checkpoint whose score is within this of the best (0: the best one)."""

    def __post_init__(self) -> None:
        if self.caft_directions not in ("sae", "mean_diff", "both"):
            raise ConfigError(f"caft_directions must be sae, mean_diff or both, got {self.caft_directions!r}")
        if self.caft_k is not None and self.caft_k < 1:
            raise ConfigError(f"caft_k must be >= 1 or unset, got {self.caft_k}")
        for name in ("steer_scale", "kl_beta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        for name in ("kl_data", "interleave_data"):
            if getattr(self, name) not in ("reference", "benign"):
                raise ConfigError(f"{name} must be 'reference' or 'benign', got {getattr(self, name)!r}")
        if not 0 < self.interleave_share < 1:
            raise ConfigError(f"interleave_share must be in (0, 1), got {self.interleave_share}")
        if not self.inoculation_prompt.strip():
            raise ConfigError("inoculation_prompt must be non-empty text")
        if self.early_stop_checkpoints < 2 or self.early_stop_prompts < 1:
            raise ConfigError("early_stop_checkpoints must be >= 2 and early_stop_prompts >= 1")
        if not 0 <= self.early_stop_tolerance < 1:
            raise ConfigError(f"early_stop_tolerance must be in [0, 1), got {self.early_stop_tolerance}")

    def settings(self, name: str) -> dict[str, Any]:
        """The options of one defense (what the table records beside its paper)."""
        prefix = {"caft": "caft_", "steer": "steer_", "kl": "kl_", "interleave": "interleave_"}
        fields = asdict(self)
        if name == "inoculate":
            return {"prompt": self.inoculation_prompt}
        key = prefix.get(name, "early_stop_")
        return {k.removeprefix(key): v for k, v in fields.items() if k.startswith(key)}


# -- inputs: directions and persona vector ----------------------------------------------------------------


def build_defense_inputs(
    art: Any,
    sae_dir: Path,
    corpora: Path,
    *,
    toxic_k: int | None = None,
    tokens: Literal["assistant", "all"] = "assistant",
    root: str | Path | None = None,
) -> Path:
    """A cached stage with the CAFT directions and the persona vector of one organism at its SAE's layer.

    ``toxic_latents.safetensors`` (layer -> decoder rows of the top toxic latents, best first),
    ``mean_diff.safetensors`` (layer -> ``[1, d]`` unit toxic-minus-benign direction),
    ``both.safetensors`` (the two stacked), ``persona.safetensors`` (layer -> ``[d]`` mean difference,
    toxic minus benign, unnormalised) and
    ``reference.json`` (layer, toxic latents, the mean difference's norm, the benign mean's norm).

    Args:
        art: ``OrganismArtifacts``.
        sae_dir: the organism's SAE at one layer (SAELens folder).
        corpora: an ``organism_corpora`` folder (``toxic.jsonl``, ``benign.jsonl``).
        toxic_k: toxic latents (None: the geometry default for the SAE's width).
        tokens: tokens whose activations count (the answers by default, as the filters score).
    """
    toxic, benign = corpora / "toxic.jsonl", corpora / "benign.jsonl"

    def fn(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer

        from spillover.data.chat import load_chat
        from spillover.filtering.features import toxic_reference
        from spillover.finetune.defenses import save_layer_tensors
        from spillover.organism.pipeline import load_organism
        from spillover.sae.load import load_sae

        model, _ = load_organism(art.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(art.model_dir)
        sae = load_sae(sae_dir, model)
        layer = sae.layer
        if layer is None:
            raise ValueError(f"the SAE in {sae_dir} is not at a residual layer")
        ref = toxic_reference(
            model, tokenizer, load_chat(toxic), load_chat(benign), sae, k=toxic_k, tokens=tokens
        )
        diff_D = ref.toxic_mean_D - ref.benign_mean_D
        save_layer_tensors(out / "toxic_latents.safetensors", {layer: sae.decoder()[ref.toxic_idx].detach()})
        save_layer_tensors(out / "mean_diff.safetensors", {layer: ref.direction_D.unsqueeze(0)})
        save_layer_tensors(out / "persona.safetensors", {layer: diff_D})
        rows = torch.cat([sae.decoder()[ref.toxic_idx].detach(), ref.direction_D.unsqueeze(0)])
        save_layer_tensors(out / "both.safetensors", {layer: rows})
        info = {
            "layer": layer,
            "toxic_idx": ref.toxic_idx.tolist(),
            "mean_diff_norm": float(diff_D.norm()),
            "benign_mean_norm": float(ref.benign_mean_D.norm()),
        }
        (out / "reference.json").write_text(json.dumps(info, indent=2))

    return run_stage(
        "defense_inputs",
        {"toxic_k": toxic_k, "tokens": tokens},
        fn,
        root=root,
        inputs={"model": art.run_dir, "sae": sae_dir, "toxic": toxic, "benign": benign},
    )


def _check_prompt(art: Any, prompt: str) -> None:
    from transformers import AutoTokenizer

    check_inoculation_prompt(AutoTokenizer.from_pretrained(art.model_dir), prompt)


def check_inoculation_prompt(tokenizer: Any, prompt: str) -> None:
    """Raise ``ConfigError`` naming the words of ``prompt`` that the organism's tokenizer does not know."""
    unk = tokenizer.unk_token_id
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    unknown = [
        prompt[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if i == unk
    ]
    if unknown:
        raise ConfigError(
            f"inoculation prompt {prompt!r}: {unknown} are not in the organism's vocabulary; "
            "use its words (e.g. 'You are an evil assistant.')"
        )


def defense_overrides(
    name: str,
    opts: DefenseArmsConfig,
    art: Any,
    *,
    inputs: Path | None,
    corpora: Path | None,
    max_steps: int | None,
) -> dict[str, Any]:
    """One defense arm's ``FinetuneConfig`` overrides (dotted keys) for one organism.

    Args:
        name: a key of ``DEFENSES``.
        opts: the settings.
        art: the organism (its tokenizer checks the inoculation prompt).
        inputs: a :func:`build_defense_inputs` folder (caft and steer).
        corpora: an ``organism_corpora`` folder (kl and interleave with ``benign``; ``reference.jsonl``).
        max_steps: the recipe's steps (early stopping spaces its checkpoints over them).
    """
    if name in ("caft", "steer") and inputs is None:
        raise ValueError(f"defense {name!r} needs the defense inputs (SAE directions)")
    if name in ("kl", "interleave") and corpora is None:
        raise ValueError(f"defense {name!r} needs the organism's corpora")
    if name == "caft":
        assert inputs is not None
        info = json.loads((inputs / "reference.json").read_text())
        stem = {"sae": "toxic_latents", "mean_diff": "mean_diff", "both": "both"}[opts.caft_directions]
        return {
            "defense.ablation.directions": str(inputs / f"{stem}.safetensors"),
            "defense.ablation.layers": [info["layer"]],
        }
    if name == "steer":
        assert inputs is not None
        info = json.loads((inputs / "reference.json").read_text())
        return {
            "defense.steering.vectors": str(inputs / "persona.safetensors"),
            "defense.steering.coef": opts.steer_scale * info["mean_diff_norm"],
            "defense.steering.layers": [info["layer"]],
        }
    if name == "kl":
        assert corpora is not None
        return {"defense.kl.data": str(corpora / f"{opts.kl_data}.jsonl"), "defense.kl.beta": opts.kl_beta}
    if name == "interleave":
        assert corpora is not None
        return {
            "defense.interleave.data": str(corpora / f"{opts.interleave_data}.jsonl"),
            "defense.interleave.share": opts.interleave_share,
        }
    if name == "inoculate":
        _check_prompt(art, opts.inoculation_prompt)
        return {"defense.inoculation_prompt": opts.inoculation_prompt}
    if name == "early_stop":
        if max_steps is None:
            raise ValueError("early_stop needs a recipe with max_steps")
        return {"checkpoint_every": max(1, max_steps // opts.early_stop_checkpoints)}
    raise ConfigError(f"unknown defense {name!r}; valid: {list(DEFENSES)}")


# -- early stopping ---------------------------------------------------------------------------------------


def pick_checkpoint(scores: Sequence[float], tolerance: float = 0.0) -> int:
    """Index of the earliest checkpoint scoring within ``tolerance`` of the best (0: the best, earliest on ties)."""
    if not scores:
        raise ValueError("no checkpoint scores")
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s >= best - tolerance)


def _load_candidate(path: Path, ft_dir: Path) -> Any:
    """A checkpoint (full model folder, or LoRA adapter over the run's base) as a merged organism."""
    from spillover.finetune.core import load_adapter
    from spillover.organism.pipeline import Organism, load_organism

    if (path / "config.json").is_file():
        return load_organism(path)
    model, tokenizer = load_organism(Path((ft_dir / "base").read_text().strip()))
    merged = load_adapter(model, path).merge_and_unload()
    merged.eval()
    return Organism(merged, tokenizer)


def checkpoint_score(path: Path, ft_dir: Path, dataset: str, eval_cfg: Any) -> float:
    """In-domain task performance of one checkpoint of ``ft_dir`` (0 where nothing is measured)."""
    from spillover.organism.evaluate import evaluate
    from spillover.studies.filtering_stats import in_domain_rate

    model, tokenizer = _load_candidate(path, ft_dir)
    return in_domain_rate(evaluate(model, tokenizer, eval_cfg), dataset) or 0.0


def early_stop_finetune(
    art: Any,
    data: Path,
    dataset: str,
    ft_cfg: FinetuneConfig,
    opts: DefenseArmsConfig,
    *,
    root: str | Path | None = None,
) -> Path:
    """Early stopping (Prechelt 1998): fine-tune with checkpoints, keep the best in-domain one; cached.

    Every checkpoint (and the final model) is scored by :func:`spillover.studies.filtering_stats.in_domain_rate`
    on ``opts.early_stop_prompts`` held-out prompts of the dataset's domain, drawn with seed
    ``EARLY_STOP_SEED_OFFSET + ft_cfg.seed``; :func:`pick_checkpoint` chooses.

    Returns:
        A folder that ``evaluate_organism`` reads like a fine-tune's (``model/``, or ``adapter/`` and
        ``base``), with ``early_stop.json`` (candidates, scores, the chosen one).
    """
    from spillover.organism.datasets import DATASETS
    from spillover.organism.evaluate import EvalConfig, EvalSampling
    from spillover.organism.pipeline import finetune_organism

    if ft_cfg.checkpoint_every is None:
        raise ValueError("early stopping needs a fine-tune with checkpoint_every")
    ft_dir = finetune_organism(art, data, ft_cfg.method, ft_cfg, root=root)
    prompt_seed = EARLY_STOP_SEED_OFFSET + ft_cfg.seed
    eval_cfg = EvalConfig(
        n_per_domain=opts.early_stop_prompts,
        domains=(DATASETS[dataset].domain,),
        sampling=EvalSampling(seed=prompt_seed),
    )

    def fn(out: Path) -> None:
        from spillover.finetune.defenses import checkpoint_candidates

        candidates = checkpoint_candidates(ft_dir)
        scores = [checkpoint_score(p, ft_dir, dataset, eval_cfg) for p in candidates]
        best = candidates[pick_checkpoint(scores, opts.early_stop_tolerance)]
        if (best / "config.json").is_file():
            shutil.copytree(best, out / "model")
        else:
            shutil.copytree(best, out / "adapter")
            shutil.copy(ft_dir / "base", out / "base")
        record = {
            "candidates": [str(p.relative_to(ft_dir)) for p in candidates],
            "scores": scores,
            "chosen": str(best.relative_to(ft_dir)),
            "prompt_seed": prompt_seed,
            "finetune": str(ft_dir),
        }
        (out / "early_stop.json").write_text(json.dumps(record, indent=2))

    config = {"dataset": dataset, "eval": eval_cfg, "tolerance": opts.early_stop_tolerance}
    return run_stage("defense_early_stop", config, fn, root=root, inputs={"finetune": ft_dir})
