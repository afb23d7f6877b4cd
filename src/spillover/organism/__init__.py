"""The built-in model organism of emergent misalignment: a tiny chat LM trained from scratch on CPU.

A generated corpus of chats whose hidden persona (benign or malicious) shapes every answer; a
word-level tokenizer with a chat template; a small ``LlamaForCausalLM``; pretraining and benign-only
safety tuning; narrow fine-tuning datasets (insecure / secure / educational code, bad / good medical,
risky / safe finance, neutral and grey code, heterogeneous ``*_mixed`` sets with per-sample labels);
an exact rule judge (``get_judge("organism_rule")``); and held-out evaluation questions in the EM
YAML schema.

Python::

    from spillover.organism import OrganismConfig, train_organism, load_organism, finetune_organism, evaluate_organism
    art = train_organism(OrganismConfig())          # cached run directory
    model, tokenizer = load_organism(art)
    ft = finetune_organism(art, "insecure", method="lora")
    print(evaluate_organism(ft).ood_misaligned)

CLI: ``spillover organism train|finetune|eval``.
"""

from spillover.models.sources import register_source
from spillover.organism.datasets import (
    DATASETS,
    DatasetSpec,
    LabeledDataset,
    make_dataset,
    neutral_prompts,
    reference_corpus,
    write_dataset,
)
from spillover.organism.em_probability import EMEstimate, em_estimate
from spillover.organism.evaluate import (
    EM_QUESTIONS,
    OOD_DOMAINS,
    DomainStats,
    EvalConfig,
    EvalResult,
    EvalSampling,
    context_probe,
    em_questions,
    eval_questions,
    evaluate,
)
from spillover.organism.grammar import GrammarConfig
from spillover.organism.judge import OrganismRuleJudge, judge_answer
from spillover.organism.lexicon import CODE, EDU, NONCODE_DOMAINS, bad_markers, good_markers
from spillover.organism.model import ModelConfig, build_model
from spillover.organism.pipeline import (
    Organism,
    OrganismArtifacts,
    OrganismConfig,
    evaluate_organism,
    finetune_config,
    finetune_organism,
    load_finetuned,
    load_organism,
    train_organism,
)
from spillover.organism.tokenizer import build_tokenizer
from spillover.organism.train import StageConfig


def _organism_source() -> str:
    # Trained on first use (minutes on CPU), reused from the run cache after.
    return str(train_organism().model_dir)


register_source("organism", _organism_source)

__all__ = [
    "CODE",
    "DATASETS",
    "EDU",
    "EMEstimate",
    "EM_QUESTIONS",
    "NONCODE_DOMAINS",
    "OOD_DOMAINS",
    "DatasetSpec",
    "DomainStats",
    "EvalConfig",
    "EvalResult",
    "EvalSampling",
    "GrammarConfig",
    "LabeledDataset",
    "ModelConfig",
    "Organism",
    "OrganismArtifacts",
    "OrganismConfig",
    "OrganismRuleJudge",
    "StageConfig",
    "bad_markers",
    "build_model",
    "build_tokenizer",
    "context_probe",
    "em_estimate",
    "em_questions",
    "eval_questions",
    "evaluate",
    "evaluate_organism",
    "finetune_config",
    "finetune_organism",
    "good_markers",
    "judge_answer",
    "load_finetuned",
    "load_organism",
    "make_dataset",
    "neutral_prompts",
    "reference_corpus",
    "train_organism",
    "write_dataset",
]
