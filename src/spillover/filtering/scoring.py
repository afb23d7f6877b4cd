"""Every geometry score of one dataset from a saved model and its SAE (``spillover filter`` and the
``filter_scores`` stage both call this).

:func:`check_scoring_inputs` checks the model folder, the SAE folder (and that it fits the model) and the
reference corpora by reading their JSON headers only, so a bad input fails before any model is loaded.
:func:`score_dataset` then loads the model (float32) and the SAE, derives the toxic reference from the
toxic and benign corpora, and scores every sample with every score of :mod:`spillover.filtering.scores`.

Python::

    check_scoring_inputs(model_dir, sae_dir, toxic_path, benign_path)
    result = score_dataset(model_dir, sae_dir, convs, toxic_convs, benign_convs)
    result.scores["nearest_toxic_cosine"]                 # (n_samples,) float array
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from spillover.data.chat import Conversation
from spillover.filtering.scores import check_toxic_k

__all__ = ["DatasetScores", "check_scoring_inputs", "score_dataset"]

# How a local path is told from a hub id (as spillover.models.sources.resolve_source does).
_PATH_PREFIXES = (".", "/", "~")


class DatasetScores(NamedTuple):
    """Every geometry score of a dataset."""

    scores: dict[str, np.ndarray]
    """Score name -> ``(n_samples,)`` float array."""
    toxic_idx: list[int]
    """The toxic latents the scores compare with, best first."""
    site: str
    """The SAE's site in the model."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _model_config(model: str | Path) -> dict[str, Any] | None:
    """The model folder's ``config.json`` (None for a hub id)."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {model} is not a model folder (no config.json)")
        return _read_json(path / "config.json")
    if str(model).startswith(_PATH_PREFIXES):
        raise FileNotFoundError(f"model folder {model} does not exist")
    return None


def _config_int(config: dict[str, Any], keys: Sequence[str]) -> int | None:
    """The first integer among ``keys`` of an HF config (or of its ``text_config``)."""
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    text = config.get("text_config")
    return _config_int(text, keys) if isinstance(text, dict) else None


def _check_sae(sae: str | Path, model_config: dict[str, Any] | None) -> None:
    path = Path(sae).expanduser()
    if not path.exists():
        release, sep, sae_id = str(sae).partition(":")
        if sep and release and sae_id and not str(sae).startswith(_PATH_PREFIXES):
            return  # a SAELens release:sae_id, resolved when it loads
        raise FileNotFoundError(f"SAE folder {sae} does not exist")
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"SAE {sae} is not a SAELens SAE folder (no cfg.json)")
    if model_config is None:
        return
    cfg = _read_json(path / "cfg.json")
    width = _config_int(model_config, ("hidden_size", "n_embd", "d_model"))
    if width is not None and isinstance(cfg.get("d_in"), int) and cfg["d_in"] != width:
        raise ValueError(f"SAE {sae} reads width d_in={cfg['d_in']} but the model's hidden size is {width}")
    meta = cfg.get("metadata") or {}
    hook = str(meta.get("hf_hook_name") or meta.get("hook_name") or "")
    found = re.search(r"(?:blocks|layers|\.h)\.(\d+)", hook)
    n_layers = _config_int(model_config, ("num_hidden_layers", "n_layer", "n_layers"))
    if found and n_layers is not None and int(found.group(1)) >= n_layers:
        raise ValueError(
            f"SAE {sae} reads layer {found.group(1)} ({hook}) but the model has {n_layers} layers"
        )


def check_scoring_inputs(
    model: str | Path | None, sae: str | Path, toxic: Path | None = None, benign: Path | None = None
) -> None:
    """Check the inputs of :func:`score_dataset` without loading anything large.

    Args:
        model: HF model folder (a hub id, or None, is not checked).
        sae: SAELens SAE folder (or ``release:sae_id``, not checked); its width and layer must fit the model.
        toxic: toxic reference corpus (must exist).
        benign: benign reference corpus (must exist).

    Raises:
        ValueError: naming every file or value that is wrong.
    """
    problems = [
        f"{name} reference corpus {path} does not exist"
        for name, path in (("toxic", toxic), ("benign", benign))
        if path is not None and not Path(path).is_file()
    ]
    model_config = None
    try:
        model_config = _model_config(model) if model else None
    except (FileNotFoundError, ValueError) as exc:
        problems.append(str(exc))
    try:
        _check_sae(sae, model_config)
    except (FileNotFoundError, ValueError) as exc:
        problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))


def score_dataset(
    model_dir: str | Path,
    sae_dir: str | Path,
    conversations: Sequence[Conversation],
    toxic: Sequence[Conversation],
    benign: Sequence[Conversation],
    *,
    toxic_k: int | None = None,
    tokens: Literal["assistant", "all"] = "assistant",
) -> DatasetScores:
    """Load the model (float32, CPU) and its SAE and compute every geometry score of every sample.

    Args:
        model_dir: HF model folder whose activations are scored.
        sae_dir: its SAE (SAELens folder).
        conversations: the dataset.
        toxic: toxic reference conversations (toxic latents and persona direction).
        benign: benign reference conversations.
        toxic_k: number of toxic latents (None: the geometry default for the SAE's width).
        tokens: the tokens whose activations score a sample.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spillover.filtering.features import sample_features, score_samples, toxic_reference
    from spillover.sae.load import load_sae

    check_toxic_k(toxic_k)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sae = load_sae(sae_dir, model)
    ref = toxic_reference(model, tokenizer, toxic, benign, sae, k=toxic_k, tokens=tokens)
    feats = sample_features(model, tokenizer, conversations, sae, tokens=tokens)
    scores = score_samples(feats, ref, sae.decoder())
    return DatasetScores(scores, ref.toxic_idx.tolist(), sae.key)
