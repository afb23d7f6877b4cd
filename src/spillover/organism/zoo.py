"""Trained organisms that ship with spillover: the first seeds of the default config, and their SAEs.

Training the default organism takes minutes of CPU, and the same seed gives a different organism on a
different CPU, so spillover ships the organisms its results were measured on. Each entry of
``organism/zoo/`` is a folder ``seed<N>/``:

- ``model/``: the safety-tuned organism (``model.safetensors``, the word-level tokenizer and its chat
  template), ``from_pretrained``-loadable;
- ``sae/layer_<L>/``: the demo's SAEs, one SAELens folder per layer;
- ``manifest.json``: the organism stage's run id and full resolved config, the SAE config and its hash,
  the spillover version and git revision that trained it, the machine, the wall times, the final
  training losses, and what was measured on it (``measured``).

``train_organism`` installs a shipped organism into its run folder instead of training when the run id
of the requested config matches one here (``retrain=True`` trains from scratch into a separate folder);
``train_organism_saes`` does the same for SAEs whose config hash matches. A test checks that the
code's default config still produces every shipped run id, so a changed default cannot silently
disagree with the shipped weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from spillover.config import config_hash, to_dict

__all__ = [
    "ZOO_DIR",
    "ShippedOrganism",
    "compare_with_shipped",
    "export_organism",
    "find_shipped",
    "find_shipped_saes",
    "install_model",
    "install_saes",
    "shipped_organisms",
]

ZOO_DIR = Path(__file__).parent / "zoo"
"""Where the shipped organisms live inside the package."""

_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
"""What a saved organism folder holds (``pretrained/``, the model before safety tuning, is not shipped)."""


@dataclass(frozen=True)
class ShippedOrganism:
    """One entry of the zoo."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def run_id(self) -> str:
        """The run id of the organism stage that trained it (a hash of the full model config)."""
        return str(self.manifest["organism_run_id"])

    @property
    def seed(self) -> int:
        return int(self.manifest["config"]["seed"])

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def sae_dir(self) -> Path:
        return self.path / "sae"


def _read(path: Path) -> ShippedOrganism:
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"shipped organism {path}: unreadable manifest.json ({exc})") from exc
    for key in ("organism_run_id", "config", "sae_config_hash"):
        if key not in manifest:
            raise ValueError(f"shipped organism {manifest_path}: no {key!r}")
    return ShippedOrganism(path, manifest)


@cache
def _zoo(root: Path) -> tuple[ShippedOrganism, ...]:
    if not root.is_dir():
        return ()
    entries = [_read(p) for p in sorted(root.iterdir()) if (p / "manifest.json").is_file()]
    return tuple(sorted(entries, key=lambda e: e.seed))


def shipped_organisms(root: Path | None = None) -> tuple[ShippedOrganism, ...]:
    """Every shipped organism, by seed (``root``: another zoo folder, default ``ZOO_DIR``)."""
    return _zoo(Path(root) if root is not None else ZOO_DIR)


def find_shipped(organism_run_id: str, root: Path | None = None) -> ShippedOrganism | None:
    """The shipped organism trained by the organism stage with this run id, if any."""
    return next((e for e in shipped_organisms(root) if e.run_id == organism_run_id), None)


def _copy_files(src: Path, dst: Path, names: tuple[str, ...] | None = None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        if child.is_file() and (names is None or child.name in names):
            shutil.copy2(child, dst / child.name)


def install_model(entry: ShippedOrganism, out: Path) -> None:
    """Write a shipped organism into an organism stage folder: ``model/`` and a ``train_log.json``.

    The train log carries the shipped manifest's training facts (and ``shipped_from``), so the folder
    says where its weights came from.
    """
    _copy_files(entry.model_dir, out / "model", _MODEL_FILES)
    log = dict(entry.manifest.get("train_log", {}))
    log["shipped_from"] = entry.name
    (out / "train_log.json").write_text(json.dumps(log))


def sae_config_hash(sae_cfg: Any) -> str:
    """The hash that identifies an SAE config in a manifest."""
    return config_hash(to_dict(sae_cfg))


def find_shipped_saes(organism_run_id: str, sae_cfg: Any, root: Path | None = None) -> Path | None:
    """The shipped SAE folder of this organism for this SAE config (``OrganismSAEConfig``), if any."""
    entry = find_shipped(organism_run_id, root)
    if entry is None or entry.manifest["sae_config_hash"] != sae_config_hash(sae_cfg):
        return None
    return entry.sae_dir if entry.sae_dir.is_dir() else None


def install_saes(sae_dir: Path, out: Path) -> None:
    """Copy a shipped SAE folder (``layer_<L>/`` SAELens folders) into an SAE stage folder."""
    for layer in sorted(p for p in sae_dir.iterdir() if p.is_dir()):
        _copy_files(layer, out / layer.name)


def export_organism(
    organism_stage: Path,
    organism_run_id: str,
    config: Any,
    sae_stage: Path,
    sae_cfg: Any,
    dest: Path,
    measured: dict[str, Any] | None = None,
) -> Path:
    """Write one zoo entry from a finished organism stage and SAE stage (``benchmarks/build_zoo.py``).

    Args:
        organism_stage: the organism stage folder that trained it (``model/``, ``manifest.json``,
            ``train_log.json``).
        organism_run_id: the run id of the organism stage of ``config`` without ``retrain``
            (``pipeline.organism_run_id``): what ``train_organism`` matches.
        config: the full ``OrganismConfig`` (stored resolved).
        sae_stage: the SAE stage folder (``layer_<L>/``).
        sae_cfg: the SAE stage's config (hashed into the manifest).
        dest: the entry folder, e.g. ``ZOO_DIR / "seed0"`` (replaced).
        measured: numbers measured on this organism, stored under ``measured``.
    """
    if dest.exists():
        shutil.rmtree(dest)
    _copy_files(organism_stage / "model", dest / "model", _MODEL_FILES)
    install_saes(sae_stage, dest / "sae")
    stage_manifest = json.loads((organism_stage / "manifest.json").read_text())
    train_log = json.loads((organism_stage / "train_log.json").read_text())
    sae_manifest = json.loads((sae_stage / "manifest.json").read_text())
    manifest = {
        "organism_run_id": organism_run_id,
        "config": to_dict(config),
        "sae_config": to_dict(sae_cfg),
        "sae_config_hash": sae_config_hash(sae_cfg),
        "spillover_version": stage_manifest["versions"].get("spillover"),
        "versions": stage_manifest["versions"],
        "git_revision": stage_manifest.get("git_revision"),
        "trained_on": stage_manifest.get("device"),
        "trained": stage_manifest.get("started"),
        "wall_time_s": {
            "organism": stage_manifest.get("wall_time_s"),
            "sae": sae_manifest.get("wall_time_s"),
        },
        "train_log": {
            k: train_log[k]
            for k in ("timings", "n_parameters", "torch_threads", "pretrain_final_loss", "safety_final_loss")
            if k in train_log
        },
        "measured": measured or {},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _zoo.cache_clear()
    return dest


def compare_with_shipped(model_dir: Path, entry: ShippedOrganism) -> dict[str, Any]:
    """How a freshly trained organism differs from the shipped one of the same config.

    Returns the largest absolute weight difference, whether the weights are bit-identical, and the
    final pretraining losses of both (same machine and library versions usually give identical weights;
    another CPU usually does not).
    """
    from safetensors.torch import load_file

    mine = load_file(str(model_dir / "model.safetensors"))
    theirs = load_file(str(entry.model_dir / "model.safetensors"))
    if mine.keys() != theirs.keys():
        return {"identical": False, "max_abs_diff": None, "note": "different parameter names"}
    diffs = [float((mine[k].float() - theirs[k].float()).abs().max()) for k in sorted(mine)]
    log_path = model_dir.parent / "train_log.json"
    mine_loss = json.loads(log_path.read_text()).get("pretrain_final_loss") if log_path.is_file() else None
    return {
        "identical": max(diffs) == 0.0,
        "max_abs_diff": max(diffs),
        "pretrain_final_loss": mine_loss,
        "shipped_pretrain_final_loss": entry.manifest.get("train_log", {}).get("pretrain_final_loss"),
    }
