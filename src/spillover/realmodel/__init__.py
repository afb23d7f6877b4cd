"""A real pretrained model as spillover's reference: SmolLM2-135M-Instruct with the real EM datasets.

Python::

    from spillover.realmodel import StudyConfig, run_study
    result = run_study(StudyConfig(), out_dir="runs/smollm2")

CLI: ``spillover real study --config configs/smollm2.yaml --out runs/smollm2``; ``--persona`` adds the EM
persona from real judged answers (``spillover.realmodel.persona_study``).
"""

from spillover.realmodel.analysis import GeometrySettings, LayerAnalysis, analyse_layer
from spillover.realmodel.cache import ActivationCache, collect_cache
from spillover.realmodel.contrasts import (
    CONTRASTS,
    DIRECTIONS,
    LATENT_SETS,
    MEAN_DIFF_CONTRASTS,
    describe_contrasts,
)
from spillover.realmodel.data import StudyData, StudyDataConfig, assemble_data
from spillover.realmodel.dynamics import (
    DynamicsRecord,
    DynamicsSettings,
    latent_set_activation,
    run_dynamics,
    summarize_record,
)
from spillover.realmodel.persona_data import PERSONA_CORPORA, PersonaData, PersonaSettings, assemble_persona
from spillover.realmodel.persona_shift import PersonaShiftSettings
from spillover.realmodel.smollm import StudyResult, check_study_inputs, run_study
from spillover.realmodel.study_config import SelfAnswerSettings, StudyConfig, load_study_config, quick_config

__all__ = [
    "CONTRASTS",
    "DIRECTIONS",
    "LATENT_SETS",
    "MEAN_DIFF_CONTRASTS",
    "PERSONA_CORPORA",
    "ActivationCache",
    "DynamicsRecord",
    "DynamicsSettings",
    "GeometrySettings",
    "LayerAnalysis",
    "PersonaData",
    "PersonaSettings",
    "PersonaShiftSettings",
    "SelfAnswerSettings",
    "StudyConfig",
    "StudyData",
    "StudyDataConfig",
    "StudyResult",
    "analyse_layer",
    "assemble_data",
    "assemble_persona",
    "check_study_inputs",
    "collect_cache",
    "describe_contrasts",
    "latent_set_activation",
    "load_study_config",
    "quick_config",
    "run_dynamics",
    "run_study",
    "summarize_record",
]
