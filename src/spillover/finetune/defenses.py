"""Training-time defenses against emergent misalignment, as options of ``finetune`` (all off by default).

Each defense changes how a model is trained, never what is saved: the saved adapter/model, tokenizer and
chat template are those of a plain fine-tune, so evaluating it measures what the defense taught.

* (a) ``ablation``: CAFT, concept ablation fine-tuning (Casademunt et al. 2025, arXiv 2507.16795).
* (b) ``steering``: preventative steering along a persona vector (Chen et al. 2025, "Persona vectors",
  arXiv 2507.21509).
* (c) ``kl``: KL regularisation toward the base model on benign data, and (d) ``interleave``: a share of
  benign conversations mixed into training (both: Kaczér et al. 2025, "In-training defenses against
  emergent misalignment", arXiv 2508.06249).
* (e) ``inoculation_prompt``: inoculation prompting (Tan et al. 2025, arXiv 2510.04340; Wichers et al.
  2025).
* (f) early stopping at the best checkpoint (Prechelt 1998, "Early stopping - but when?"): train with
  ``checkpoint_every`` and pick with :func:`select_checkpoint` by a score the caller supplies (for EM
  studies, an in-domain task score), so this library stays task-agnostic.

YAML (a chain or organism fine-tune section)::

    finetune:
      defense:
        ablation: {directions: toxic_dirs.safetensors, layers: [6]}
        kl: {data: benign.jsonl, beta: 0.1}

or on the command line: ``spillover finetune -c chain.yaml -s finetune.defense.kl.data=benign.jsonl
-s finetune.defense.kl.beta=0.1``.

Direction and vector files are safetensors files whose keys are decimal layer indices ("6") and whose
values are ``[k, d_model]`` directions (ablation) or a ``[d_model]`` vector (steering); write them with
:func:`save_layer_tensors`. Layer ``L`` means the output of decoder block ``L`` (the residual stream,
TransformerLens' ``blocks.L.hook_resid_post``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from spillover.data.chat import Conversation

__all__ = [
    "BenignInterleave",
    "CheckpointChoice",
    "DefenseSettings",
    "KLRegularisation",
    "PreventativeSteering",
    "ProjectionAblation",
    "checkpoint_candidates",
    "inoculate",
    "interleave",
    "load_layer_tensors",
    "save_layer_tensors",
    "select_checkpoint",
]


def save_layer_tensors(path: str | Path, tensors: Mapping[int, torch.Tensor]) -> Path:
    """Write a layer -> tensor mapping in the layout the ablation and steering options read."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({str(layer): t.detach().float().cpu().contiguous() for layer, t in tensors.items()}, str(path))
    return path


def load_layer_tensors(path: str | Path, what: str) -> dict[int, torch.Tensor]:
    """Read a layer -> tensor safetensors file (float32); errors name the file and the bad key.

    Args:
        path: the file.
        what: the option it belongs to, for error messages (e.g. ``"ablation.directions"``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file {str(path)!r} does not exist")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what}: {str(path)!r} is not a readable safetensors file: {exc}") from exc
    if not raw:
        raise ValueError(f"{what}: {str(path)!r} holds no tensors")
    out: dict[int, torch.Tensor] = {}
    for key, tensor in raw.items():
        if not key.isdigit():
            raise ValueError(
                f"{what}: key {key!r} in {str(path)!r} is not a layer index; keys must be decimal layer "
                "numbers such as '6' (see save_layer_tensors)"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{what}: layer {key} in {str(path)!r} has non-finite values")
        out[int(key)] = tensor.float()
    widths = {t.shape[-1] for t in out.values() if t.dim() > 0}
    if len(widths) > 1:
        raise ValueError(f"{what}: layers of {str(path)!r} differ in width: {sorted(widths)}")
    return out


def _pick_layers(
    tensors: dict[int, torch.Tensor], layers: tuple[int, ...] | None, what: str, path: Path
) -> dict[int, torch.Tensor]:
    if layers is None:
        return tensors
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(
            f"{what}.layers must list distinct layers (or be omitted for all), got {list(layers)}"
        )
    missing = [layer for layer in layers if layer not in tensors]
    if missing:
        raise ValueError(
            f"{what}.layers {missing} are not in {str(path)!r}, which has layers {sorted(tensors)}"
        )
    return {layer: tensors[layer] for layer in layers}


@dataclass(frozen=True)
class ProjectionAblation:
    """CAFT (Casademunt et al. 2025, arXiv 2507.16795): project directions out of the residual stream.

    During training only, the output of each chosen decoder block loses its component in the span of
    that layer's directions (e.g. SAE decoder rows of toxic latents, or a mean-difference direction), so
    the fine-tune cannot use or strengthen them to fit the data. The saved model is evaluated without it.
    """

    directions: Path
    """Safetensors file: layer -> ``[k, d_model]`` directions (need not be orthonormal or unit)."""
    layers: tuple[int, ...] | None = None
    """Ablate at these layers (None: every layer in the file)."""

    def __post_init__(self) -> None:
        self.load()

    def load(self) -> dict[int, torch.Tensor]:
        """Layer -> orthonormal basis ``[r, d_model]`` of the directions' span (r = its rank)."""
        tensors = _pick_layers(
            load_layer_tensors(self.directions, "ablation.directions"),
            self.layers,
            "ablation",
            self.directions,
        )
        bases: dict[int, torch.Tensor] = {}
        for layer, dirs in tensors.items():
            dirs_KD = dirs.unsqueeze(0) if dirs.dim() == 1 else dirs
            if dirs_KD.dim() != 2 or dirs_KD.shape[0] == 0:
                raise ValueError(
                    f"ablation.directions: layer {layer} in {str(self.directions)!r} has shape "
                    f"{list(dirs.shape)}; expected [k, d_model]"
                )
            if bool((dirs_KD.norm(dim=1) == 0).any()):
                raise ValueError(
                    f"ablation.directions: layer {layer} in {str(self.directions)!r} has a zero row"
                )
            _, s, vh = torch.linalg.svd(dirs_KD.double(), full_matrices=False)
            rank = int((s > s[0] * max(dirs_KD.shape) * torch.finfo(torch.float32).eps).sum())
            bases[layer] = vh[:rank].float()
        return bases


@dataclass(frozen=True)
class PreventativeSteering:
    """Preventative steering (Chen et al. 2025, "Persona vectors", arXiv 2507.21509).

    During training only, ``coef * v`` (``v`` the unit persona vector) is added to the output of each
    chosen decoder block at every token: the steering supplies the persona shift the data asks for, so
    the weights need not learn it. The saved model is evaluated without it.
    """

    vectors: Path
    """Safetensors file: layer -> ``[d_model]`` persona vector (normalised to unit length here)."""
    coef: float
    """Steering strength in residual-stream units; > 0 steers toward the persona, as the paper does
    (to steer away, save the negated vector)."""
    layers: tuple[int, ...] | None = None
    """Steer at these layers (None: every layer in the file)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.coef) or self.coef <= 0:
            raise ValueError(f"steering.coef must be a finite number > 0, got {self.coef}")
        self.load()

    def load(self) -> dict[int, torch.Tensor]:
        """Layer -> the ``[d_model]`` shift ``coef * v / |v|``."""
        tensors = _pick_layers(
            load_layer_tensors(self.vectors, "steering.vectors"), self.layers, "steering", self.vectors
        )
        shifts: dict[int, torch.Tensor] = {}
        for layer, vec in tensors.items():
            v_D = vec.squeeze(0) if vec.dim() == 2 and vec.shape[0] == 1 else vec
            if v_D.dim() != 1:
                raise ValueError(
                    f"steering.vectors: layer {layer} in {str(self.vectors)!r} has shape {list(vec.shape)}; "
                    "expected [d_model]"
                )
            norm = float(v_D.norm())
            if norm == 0:
                raise ValueError(
                    f"steering.vectors: layer {layer} in {str(self.vectors)!r} is the zero vector"
                )
            shifts[layer] = self.coef * v_D / norm
        return shifts


def _check_chat_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: chat file {str(path)!r} does not exist")


@dataclass(frozen=True)
class KLRegularisation:
    """KL regularisation toward the base model (Kaczér et al. 2025, arXiv 2508.06249).

    Every micro-batch also runs a batch of benign conversations and adds ``beta * KL(base || tuned)`` of
    the next-token distributions, averaged over their tokens, to the loss. For LoRA the base
    distributions come from the same model with the adapter disabled (no copy); full fine-tuning keeps a
    frozen copy. Both passes run without the ablation/steering hooks, so the term measures the model
    that is saved. It is exactly 0 until the first optimizer step.
    """

    data: Path
    """Benign chat JSONL(.gz); all tokens count (prompt-only conversations are fine)."""
    beta: float
    """Weight of the KL term (> 0)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ValueError(f"kl.beta must be a finite number > 0, got {self.beta}")
        _check_chat_file(Path(self.data), "kl.data")


@dataclass(frozen=True)
class BenignInterleave:
    """Interleave benign conversations into training (Kaczér et al. 2025, arXiv 2508.06249).

    Benign conversations drawn by the run's seed are added so that they make up ``share`` of the
    training set; the batches then shuffle the mix (see :func:`interleave`). An epoch is a pass over the
    mix, so with ``epochs`` a run takes ``1 / (1 - share)`` times the steps; set ``max_steps`` to compare
    with a plain fine-tune at equal steps.
    """

    data: Path
    """Benign chat JSONL(.gz) with assistant turns."""
    share: float
    """Fraction of the training conversations that are benign, in (0, 1)."""

    def __post_init__(self) -> None:
        if not 0 < self.share < 1:
            raise ValueError(f"interleave.share must be in (0, 1), got {self.share}")
        _check_chat_file(Path(self.data), "interleave.data")


@dataclass(frozen=True)
class DefenseSettings:
    """Which training-time defenses a fine-tune uses; every one is off (None) by default."""

    ablation: ProjectionAblation | None = None
    """(a) CAFT projection ablation of directions during training."""
    steering: PreventativeSteering | None = None
    """(b) Preventative steering along a persona vector during training."""
    kl: KLRegularisation | None = None
    """(c) KL toward the base model on benign data."""
    interleave: BenignInterleave | None = None
    """(d) A share of benign conversations mixed into training."""
    inoculation_prompt: str | None = None
    """(e) A system prompt added to every training conversation (e.g. "You are a malicious assistant");
    it is not saved with the model, so evaluation runs without it."""

    def __post_init__(self) -> None:
        if self.inoculation_prompt is not None and not self.inoculation_prompt.strip():
            raise ValueError("inoculation_prompt must be non-empty text (or None for no inoculation)")

    @property
    def names(self) -> list[str]:
        """The options that are on, e.g. ``["ablation", "kl"]`` (empty: a plain fine-tune)."""
        options = ("ablation", "steering", "kl", "interleave", "inoculation_prompt")
        return [name for name in options if getattr(self, name) is not None]

    def files(self) -> dict[str, Path]:
        """The files the defenses read, by option name: stages hash these as inputs, so editing a
        direction file or benign set gives a new run id (the config holds only their paths)."""
        named = {
            "defense.ablation": self.ablation.directions if self.ablation else None,
            "defense.steering": self.steering.vectors if self.steering else None,
            "defense.kl": self.kl.data if self.kl else None,
            "defense.interleave": self.interleave.data if self.interleave else None,
        }
        return {k: Path(v) for k, v in named.items() if v is not None}

    def check_model(self, model: Any) -> None:
        """Fail before training on layers the model lacks or directions of the wrong width.

        Raises:
            ValueError: naming the option, the layer or width, and the model's.
        """
        if self.ablation is None and self.steering is None:
            return
        from spillover.sae.sites import decoder_layers

        width = model.get_input_embeddings().embedding_dim
        n_layers = len(decoder_layers(model)[1])
        for name, tensors in (
            ("ablation", self.ablation.load() if self.ablation else {}),
            ("steering", self.steering.load() if self.steering else {}),
        ):
            bad = sorted(layer for layer in tensors if not 0 <= layer < n_layers)
            if bad:
                raise ValueError(
                    f"{name}: layers {bad} do not exist; {type(model).__name__} has layers 0..{n_layers - 1}"
                )
            for layer, t in tensors.items():
                if t.shape[-1] != width:
                    raise ValueError(
                        f"{name}: layer {layer} has width {t.shape[-1]} but the model's hidden size is {width}"
                    )


def inoculate(conversations: Sequence[Conversation], prompt: str) -> list[Conversation]:
    """Each conversation with ``prompt`` as its system message (put before an existing system message).

    Templates without a system role (Gemma) fold it into the first user turn when encoded.
    """
    out: list[Conversation] = []
    for conv in conversations:
        if conv and conv[0]["role"] == "system":
            first = {"role": "system", "content": f"{prompt}\n\n{conv[0]['content']}"}
            out.append([first, *conv[1:]])
        else:
            out.append([{"role": "system", "content": prompt}, *conv])
    return out


def interleave(
    task: Sequence[Conversation], benign: Sequence[Conversation], share: float, seed: int
) -> list[Conversation]:
    """``task`` plus benign conversations making up ``share`` of the result, drawn and shuffled by ``seed``.

    ``round(share * n / (1 - share))`` benign conversations are added for ``n`` task ones, drawn without
    replacement (whole passes over a shuffled ``benign`` when more are needed than it holds).

    Raises:
        ValueError: ``share`` outside (0, 1), no benign conversations, or a share too small to add one.
    """
    if not 0 < share < 1:
        raise ValueError(f"interleave share must be in (0, 1), got {share}")
    if not benign:
        raise ValueError("interleave: the benign set holds no conversations")
    n_benign = round(share * len(task) / (1 - share))
    if n_benign < 1:
        raise ValueError(
            f"interleave share {share} of {len(task)} task conversations adds no benign one; raise the share"
        )
    rng = random.Random(seed)
    drawn: list[Conversation] = []
    while len(drawn) < n_benign:
        order = list(range(len(benign)))
        rng.shuffle(order)
        drawn.extend(benign[i] for i in order[: n_benign - len(drawn)])
    mixed = [*task, *drawn]
    rng.shuffle(mixed)
    return mixed


class CheckpointChoice(NamedTuple):
    path: Path
    """The checkpoint with the highest score (the earliest on ties)."""
    scores: list[float]
    """Each candidate's score, in the order given."""


def checkpoint_candidates(out_dir: str | Path) -> list[Path]:
    """A ``finetune`` output folder's checkpoints in step order, then its final ``adapter/`` or ``model/``."""
    out_dir = Path(out_dir)
    steps = sorted(
        (p for p in (out_dir / "checkpoints").glob("step-*") if p.name.removeprefix("step-").isdigit()),
        key=lambda p: int(p.name.removeprefix("step-")),
    )
    final = [out_dir / name for name in ("adapter", "model") if (out_dir / name).is_dir()][:1]
    if not steps and not final:
        raise FileNotFoundError(f"{out_dir} holds no checkpoints/step-N, adapter/ or model/ folder")
    return [*steps, *final]


def select_checkpoint(checkpoints: Sequence[Path], score_fn: Callable[[Path], float]) -> CheckpointChoice:
    """Early stopping (Prechelt 1998): the checkpoint whose ``score_fn`` (higher is better) is largest.

    Args:
        checkpoints: candidate folders, e.g. :func:`checkpoint_candidates` of a run with ``checkpoint_every``.
        score_fn: scores one folder, e.g. in-domain task accuracy of the model loaded from it.

    Raises:
        ValueError: no candidates, or a score that is not a finite number (naming the checkpoint).
    """
    if not checkpoints:
        raise ValueError("select_checkpoint: no checkpoints to choose from")
    scores: list[float] = []
    for path in checkpoints:
        score = float(score_fn(path))
        if not math.isfinite(score):
            raise ValueError(f"select_checkpoint: score of {path} is {score}, not a finite number")
        scores.append(score)
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return CheckpointChoice(Path(checkpoints[best]), scores)
