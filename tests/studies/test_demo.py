from __future__ import annotations

import json
from pathlib import Path

import pytest

from spillover.studies.demo import DemoConfig, SpilloverConfig, print_summary, run_demo


def tiny_demo() -> DemoConfig:
    """The smallest demo that runs every stage (seconds, not minutes; numbers are meaningless)."""
    from spillover.geometry.report import GeometryConfig
    from spillover.organism.evaluate import EvalConfig, EvalSampling
    from spillover.organism.inputs import OrganismSAEConfig
    from spillover.organism.model import ModelConfig
    from spillover.organism.pipeline import OrganismConfig
    from spillover.organism.train import StageConfig
    from spillover.sae.train import SAETrainConfig
    from spillover.studies.dynamics import DynamicsConfig
    from spillover.studies.filtering import FilterExperimentConfig

    eval_cfg = EvalConfig(
        n_per_domain=4, domains=("sports", "general", "code"), sampling=EvalSampling(max_new_tokens=12)
    )
    return DemoConfig(
        preset="tiny",
        organisms=(0, 1),  # two organisms, so every section is pooled
        organism=OrganismConfig(
            model=ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, max_len=160),
            pretrain=StageConfig(steps=6, batch_size=8, lr=3e-3, warmup=1),
            safety=StageConfig(steps=2, batch_size=8, lr=1e-3, warmup=1),
            n_samples=24,
            n_reference=16,
            n_eval=4,
        ),
        sae=OrganismSAEConfig(
            layers=(1,),
            sae=SAETrainConfig(d_sae=64, k=4, training_tokens=2048, batch_size=256),
            n_documents=20,
            include_datasets=False,
        ),
        geometry=GeometryConfig(n_null=20, n_permutations=200),
        em_datasets=("insecure", "secure"),
        finetune_steps=2,
        eval=eval_cfg,
        spillover=SpilloverConfig(steps=1, n_neutral=8, top_k=3),
        filtering=FilterExperimentConfig(
            dataset="insecure_mixed", methods=("geometry", "judge", "random"), finetune_steps=2, eval=eval_cfg
        ),
        # The EM run's method and steps, so the dynamics reuse its fine-tune (as in the full demo).
        dynamics=DynamicsConfig(
            checkpoint_every=1, finetune_method="lora", finetune_steps=2, n_prompts=6, n_eval=3
        ),
    )


def _check_summary(summary: dict, out: Path) -> None:
    for name in ("insecure", "secure"):
        entry = summary["em"][name]
        assert 0 <= entry["misaligned_rate"] <= 1 and len(entry["ci"]) == 2
        lo, hi = entry["em_probability_ci"]
        assert 0 <= lo <= entry["em_probability"] <= hi <= 1
        assert isinstance(summary["geometry"][name]["score"], float)
    assert "p_value" in summary["geometry"]
    for method in ("geometry", "judge", "random"):
        assert "misaligned_rate" in summary["filtering"][method]
    assert "relative_reduction" in summary["filtering"]["geometry"]
    assert summary["dynamics"]["steps"] == [0, 1, 2]
    assert {"organism_s", "sae_s", "geometry_s", "em_s", "filtering_s", "dynamics_s"} <= set(
        summary["timings"]
    )
    # Pooled over 2 organisms x 1 seed: every rate has two units, each organism keeps its own numbers.
    assert len(summary["em"]["insecure"]["per_seed"]) == 2
    assert summary["filtering"]["units"] == ["organism0/s0", "organism1/s0"]
    assert (
        len(summary["filtering"]["unfiltered"]["per_seed"]) == 2
        and "random" in summary["filtering"]["geometry_vs"]
    )
    assert len(summary["geometry"]["per_organism_p"]) == 2
    assert set(summary["per_organism"]) == {"seed0", "seed1"}
    assert (
        summary["per_organism"]["seed1"]["em"]["insecure"]["misaligned_rate"]
        == summary["em"]["insecure"]["per_seed"][1]
    )
    assert {v["verdict"] for v in summary["verdicts"]} <= {"held", "not held", "not measured"}
    own = summary["per_organism"]["seed1"]["filtering"]
    assert own["dataset"] == summary["filtering"]["dataset"]
    assert len(own["relative_reduction"]["geometry"]) == 1  # one unit per organism
    assert own["relative_reduction"]["geometry"] == summary["filtering"]["geometry"]["per_seed_reduction"][1:]
    assert any(v["claim"] == "EM: insecure > secure" for v in summary["verdicts"])
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 5


def test_tiny_demo_resumes_after_interruption_then_reuses_every_stage(tmp_path, monkeypatch, capsys):
    import spillover.organism.pipeline as pipeline
    import spillover.sae.train as sae_train
    import spillover.studies.filtering as experiment

    root = tmp_path / "runs"
    real_sets = experiment.write_filter_sets

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # 1. Interrupted in the middle of filtering: finished stages stay, nothing looks finished after it.
    monkeypatch.setattr(experiment, "write_filter_sets", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tiny_demo(), tmp_path / "out", root=root)
    assert not (tmp_path / "out" / "summary.json").exists()
    finished = {p.parent.parent.name for p in root.glob("*/*/.complete")}
    assert {"organism", "organism_sae", "demo_geometry", "organism_finetune", "filter_scores"} <= finished
    assert "filter_sets" not in finished and "dynamics" not in finished

    # 2. Resumed: the organism is not trained again, the rest completes.
    calls: list[str] = []
    real_train = pipeline._train_model
    monkeypatch.setattr(
        pipeline, "_train_model", lambda *a, **k: (calls.append("organism"), real_train(*a, **k))
    )
    monkeypatch.setattr(experiment, "write_filter_sets", real_sets)
    summary = run_demo(tiny_demo(), tmp_path / "out", root=root)
    assert calls == []
    _check_summary(summary, tmp_path / "out")
    # The dynamics stage keeps its per-checkpoint journal; the resumable copy beside it is gone.
    dynamics_stage = next(root.glob("dynamics/*/.complete")).parent
    assert len((dynamics_stage / "points.jsonl").read_text().splitlines()) == 3
    assert not list((root / "dynamics").glob(".*.points.jsonl"))
    print_summary(summary)
    printed = capsys.readouterr().out
    assert "Filtering insecure_mixed" in printed and "Claims (2 organism(s)" in printed

    # 3. Warm: nothing is trained or fine-tuned, the numbers are the same.
    monkeypatch.setattr(pipeline, "_train_model", lambda *a, **k: calls.append("organism"))
    monkeypatch.setattr(pipeline, "finetune", lambda *a, **k: calls.append("finetune"))
    monkeypatch.setattr(sae_train, "train_sae_on_activations", lambda *a, **k: calls.append("sae"))
    again = run_demo(tiny_demo(), tmp_path / "out2", root=root)
    assert calls == []
    assert again["em"] == summary["em"] and again["filtering"] == summary["filtering"]


def test_demo_config_rejects_unknown_datasets():
    with pytest.raises(ValueError, match="unknown organism datasets"):
        DemoConfig(em_datasets=("insecure", "nope"))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--seeds", "0,x"], "'0,x'"),
        (["--seeds", ","], "no seed"),
        (["--organisms", "0,a"], "'0,a'"),
        (["--organisms", "1,1"], "distinct"),
        (["--threads", "0"], "--threads"),
        (["--out", "FILE"], "is a file"),
        (["--root", "FILE"], "is a file"),
    ],
)
def test_bad_demo_options_fail_before_anything_is_trained(tmp_path, monkeypatch, args, named):
    from typer.testing import CliRunner

    import spillover.organism.pipeline as pipeline
    from spillover.cli import app

    monkeypatch.setattr(
        pipeline, "train_organism", lambda *a, **k: pytest.fail("trained despite a bad option")
    )
    (tmp_path / "file").write_text("")
    args = [str(tmp_path / "file") if a == "FILE" else a for a in args]
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and named in result.output


@pytest.mark.slow
def test_workers_compute_every_fine_tune_before_the_sequential_pass(tmp_path, monkeypatch):
    import spillover.organism.pipeline as pipeline

    calls: list[str] = []
    real = pipeline.finetune
    monkeypatch.setattr(pipeline, "finetune", lambda *a, **k: (calls.append("main"), real(*a, **k))[1])
    lines: list[str] = []
    summary = run_demo(
        tiny_demo(), tmp_path / "out", root=tmp_path / "runs", progress=lines.append, workers=2
    )
    # The spawned workers do not see this patch: every fine-tune ran there, none in this process.
    assert calls == []
    assert any(line.startswith("running") and "2 worker processes" in line for line in lines)
    done = [line.split("] ", 1)[1] for line in lines if line.startswith("[") and "] done: " in line]
    assert "done: filter scores (organism 1)" in done
    assert any(line.startswith("done: filtering geometry") and "(organism 1)" in line for line in done)
    assert "done: training dynamics (organism 1)" in done
    # Every job was expected: the count never passes the total announced in the "running" line.
    total = int(next(line for line in lines if line.startswith("running")).split()[1])
    counts = [line[1:].split("]")[0].split("/") for line in lines if line.startswith("[")]
    assert counts and all(int(n) <= int(t) == total for n, t in counts)
    assert {"geometry", "fine-tune (EM)", "fine-tune (filtering)", "dynamics"} <= set(
        summary["worker_time_s"]
    )
    _check_summary(summary, tmp_path / "out")


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_demo(tiny_demo(), tmp_path / "out", root=tmp_path / "runs", workers=0)


def test_default_workers_follow_the_cpus_this_process_may_use(monkeypatch):
    import os

    from spillover.cli import demo as demo_cli

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert demo_cli.default_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert demo_cli.default_workers() == demo_cli.MAX_DEFAULT_WORKERS
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS: no affinity call, the machine's count
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert demo_cli.default_workers() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert demo_cli.default_workers() == 1


def test_the_workers_time_is_printed_only_where_they_worked(capsys):
    timings = {"parallel_s": 190.0, "geometry_s": 0.01, "total_s": 192.0}
    print_summary({"timings": timings, "worker_time_s": {"fine-tune (EM)": 158.2, "geometry": 0.1}})
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "time: parallel 190s, total 192s" in printed
    assert "in the worker processes" in printed and "fine-tune (EM) 158s" in printed
    assert "geometry 0s" not in printed
    print_summary({"timings": {"parallel_s": 5.0}, "worker_time_s": {"fine-tune (EM)": 0.2}})  # warm
    assert "in the worker processes" not in capsys.readouterr().out


def test_the_quick_preset_says_its_numbers_test_no_claim(capsys):
    print_summary({"run": {"preset": "quick"}})
    assert "not evidence for or against the claims" in " ".join(capsys.readouterr().out.split())
    print_summary({"run": {"preset": "full"}})
    assert "Quick preset" not in capsys.readouterr().out
