"""Every config file shipped in configs/ loads into its config class (a typo in a shipped file is a bug)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spillover.config import load_config
from spillover.data.registry import DATASETS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["em-chain-smollm2.yaml", "em-chain-gemma2-2b.yaml"])
def test_chain_configs_load(name: str) -> None:
    from spillover.chain.config import load_pipeline_config

    cfg = load_pipeline_config(CONFIGS / name)
    assert cfg.finetune is not None and cfg.finetune.data in DATASETS
    assert cfg.generate.questions == "em/first_plot_questions"


def test_the_gemma_chain_is_the_em_recipe() -> None:
    from spillover.chain.config import load_pipeline_config

    ft = load_pipeline_config(CONFIGS / "em-chain-gemma2-2b.yaml").finetune
    assert ft is not None
    assert (ft.method, ft.lora.r, ft.lora.alpha, ft.lora.use_rslora, ft.lr, ft.epochs) == (
        "lora",
        32,
        64,
        True,
        1e-5,
        1.0,
    )
    assert ft.batch_size * ft.grad_accum == 16


def test_geometry_config_loads() -> None:
    from spillover.geometry.report import GeometryConfig
    from spillover.studies.geometry import GeometryRunConfig

    cfg = load_config(GeometryRunConfig, yaml.safe_load((CONFIGS / "geometry-gemma2-2b.yaml").read_text()))
    assert cfg.layers and "{layer}" in (cfg.sae or "")
    load_config(GeometryConfig, cfg.geometry or {})


def test_smollm2_study_config_loads() -> None:
    from spillover.realmodel import StudyConfig

    cfg = load_config(StudyConfig, yaml.safe_load((CONFIGS / "smollm2.yaml").read_text()))
    assert cfg.layers


def test_the_sweep_files_keep_their_sampling_settings() -> None:
    from spillover.pipeline.sweep import load_sweep, plan_sweep

    tiny = plan_sweep(load_sweep(CONFIGS / "sweeps" / "organism_tiny.yaml"))
    sampling = {c.config.eval.sampling for c in tiny.cells}
    assert {(s.max_new_tokens, s.temperature) for s in sampling} == {(30, 1.0)}
    grid = plan_sweep(load_sweep(CONFIGS / "sweeps" / "paper_grid.yaml"))
    assert {
        (c.config.generate.sampling.max_new_tokens, c.config.generate.sampling.temperature)
        for c in grid.cells
    } == {(600, 1.0)}


def test_a_partial_eval_sampling_section_keeps_the_organism_answer_length() -> None:
    from spillover.organism.evaluate import EvalConfig

    cfg = load_config(EvalConfig, {"sampling": {"seed": 3}})
    assert (cfg.sampling.max_new_tokens, cfg.sampling.seed) == (40, 3)


def test_no_shipped_config_reads_data_from_a_shared_folder() -> None:
    # Data is named by registry name (resolved in the data home) so a plain clone's configs work.
    for path in [*CONFIGS.glob("*.yaml"), *CONFIGS.glob("sweeps/*.yaml")]:
        assert "shared/data" not in path.read_text(), path


def test_every_registry_name_in_the_shipped_configs_exists() -> None:
    from spillover.realmodel import StudyConfig

    study = load_config(StudyConfig, yaml.safe_load((CONFIGS / "smollm2.yaml").read_text()))
    assert study.data.data_dir is None
    assert {study.questions, *study.neutral} <= set(DATASETS)
    geometry = yaml.safe_load((CONFIGS / "geometry-gemma2-2b.yaml").read_text())
    assert {*geometry["datasets"], *geometry["controls"]} <= set(DATASETS)
