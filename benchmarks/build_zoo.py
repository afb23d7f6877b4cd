"""Build the shipped organisms (``src/spillover/organism/zoo/seed<N>/``) from the default config.

Trains (or reuses from the run root) the default organism for each seed and the demo's SAEs on it, and
writes each zoo entry with its manifest. ``--measure SUMMARY`` then stores what a demo run over the
shipped organisms measured on each (its ``per_organism`` section) in the manifests.

Ship the first N seeds, not a selection: ``--seeds 0 1 2`` builds seeds 0-2.

    python benchmarks/build_zoo.py --seeds 0 1 2 --root /tmp/zoo-build/runs
    python benchmarks/build_zoo.py --measure runs/demo/summary.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spillover.organism.inputs import train_organism_saes
from spillover.organism.pipeline import OrganismConfig, organism_run_id, train_organism
from spillover.organism.zoo import ZOO_DIR, export_organism, find_shipped, shipped_organisms
from spillover.studies.demo.config import DemoConfig


def build(seeds: list[int], root: Path) -> None:
    sae_cfg = DemoConfig().sae
    for seed in seeds:
        cfg = OrganismConfig(seed=seed)
        # Where an organism of this config is shipped already, train from scratch (retrain) instead of
        # installing it; otherwise the plain stage trains, or reuses a finished training in ``root``.
        retrain = find_shipped(organism_run_id(cfg)) is not None
        art = train_organism(cfg, root=root, retrain=retrain)
        sae_dir = train_organism_saes(art, sae_cfg, root=root)
        dest = ZOO_DIR / f"seed{seed}"
        export_organism(art.run_dir, organism_run_id(cfg), cfg, sae_dir, sae_cfg, dest)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        print(f"seed {seed}: {dest} ({size / 1e6:.2f} MB) from {art.run_dir}")


def measure(summary_path: Path) -> None:
    summary = json.loads(summary_path.read_text())
    per = summary.get("per_organism")
    if not per:
        raise SystemExit(f"{summary_path} has no per_organism section (a demo run over shipped organisms)")
    for entry in shipped_organisms():
        numbers = per.get(entry.name)
        if numbers is None:
            print(f"{entry.name}: not in {summary_path}")
            continue
        manifest = dict(entry.manifest)
        manifest["measured"] = {"demo": numbers, "demo_git_revision": summary["run"].get("git_revision")}
        (entry.path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        print(f"{entry.name}: measured numbers stored")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[])
    ap.add_argument("--root", type=Path, default=Path("runs/zoo-build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure", type=Path, help="a demo summary.json to store per-organism numbers from")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.seeds:
        build(args.seeds, args.root)
    if args.measure:
        measure(args.measure)
    total = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    print(f"zoo: {len(shipped_organisms())} organisms, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
