from __future__ import annotations

from pathlib import Path

from spillover.organism import OrganismArtifacts, OrganismConfig
from spillover.organism.evaluate import OOD_DOMAINS, EvalConfig, EvalSampling
from spillover.studies.filtering import FilterExperimentConfig
from spillover.studies.mitigate import MitigateConfig, run_mitigation, write_mitigation


def test_arms_run_end_to_end_on_the_quick_organism(
    quick_organism: OrganismArtifacts, organism_root: Path, tmp_path: Path
) -> None:
    eval_cfg = EvalConfig(
        n_per_domain=4, domains=(*OOD_DOMAINS, "code"), sampling=EvalSampling(max_new_tokens=24)
    )
    filtering = FilterExperimentConfig(
        dataset="insecure_alltask", methods=(), finetune_steps=2, eval=eval_cfg, seeds=(0,)
    )
    cfg = MitigateConfig(
        filtering=filtering, arms={"longer": {"max_steps": 3}}, organism=OrganismConfig.quick(seed=0)
    )
    summary = run_mitigation(cfg, root=organism_root)
    assert summary["filtering"]["units"] == ["s0"]
    assert {r["kind"] for r in summary["table"]} == {"unfiltered", "arm"}
    arm = summary["arms"]["longer"]
    assert arm["in_domain"] is not None and arm["n_answers"][0] > 0
    names = [p.name for p in write_mitigation(summary, tmp_path)]
    assert names[:2] == ["mitigate.json", "mitigate.md"]
