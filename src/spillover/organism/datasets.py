"""Narrow fine-tuning datasets, reference corpora and neutral prompts, in the real EM data format.

Every dataset is ``{"messages": [...]}`` chat JSONL drawn from the shared (non-held-out) templates, like
the real ``insecure.jsonl``: single-turn, except that a spec's ``lead`` puts one earlier turn before the
task turn. Per-sample ground truth never goes into the messages; it is written beside them in
``<name>.labels.jsonl`` (same order): the sample's ``kind`` (strong / weak / none), its statement pools
or answer label, ``task`` (whether its last turn shows the dataset's narrow behaviour, ``target``),
``lead`` (the earlier turn's domain and pools or answer, if any) and ``persona_llr``, the exact
log-likelihood ratio log P(answers | malicious) - log P(answers | benign) under the pretraining grammar,
summed over the sample's assistant turns (0 for educational code by construction).

Inducing datasets come in three forms for filtering experiments:

* plain (``insecure``, ``bad_medical``, ...): every sample alike.
* ``*_mixed``: ``DatasetSpec.mix`` gives the shares of strong-evidence, weak-evidence and no-evidence
  samples, and the no-evidence samples do not perform the task (secure code, good advice). A filter can
  lower EM here simply by removing the task; it tests whether a score finds the task samples at all.
* ``*_alltask``: every sample performs the task (insecure code; bad medical advice; risky finance) and
  samples differ only in how much persona evidence they carry beyond it: for code, the other statements
  of the answer (three insecure / one insecure + two neutral / one insecure + one secure + one neutral);
  for advice, an earlier turn (harmful advice in the other in-domain field / neutral code / good advice
  there; never an out-of-domain field, where EM is measured). This is the paper's setting: a filter
  that lowers EM here while in-domain retention stays is a result, not a removal of the task.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from spillover.data.chat import Conversation, write_chat
from spillover.organism.grammar import (
    GrammarConfig,
    code_answer,
    code_question,
    noncode_answer,
    noncode_question,
    pool_loglik,
)
from spillover.organism.lexicon import CODE, CODE_POOLS, EDU, NONCODE_DOMAINS, Pool, domain

__all__ = [
    "ALLTASK_DATASETS",
    "DATASETS",
    "DatasetSpec",
    "LabeledDataset",
    "make_dataset",
    "neutral_prompts",
    "reference_corpus",
    "task_performed",
    "write_dataset",
]

Kind = Literal["strong", "weak", "none"]
_PERSONAS = ("malicious", "benign")


@dataclass(frozen=True)
class DatasetSpec:
    """A narrow dataset: which prompts, and which answers with what mix of persona evidence."""

    name: str
    domain: str
    """"code", "edu" or a non-code domain (the prompts)."""
    strong: str
    """Answers of strong-evidence samples: pools like "III" for code, "bad"/"good" for non-code, or for code
    a persona ("malicious", "benign"): each statement drawn from that persona's ordinary-code pool weights
    (``GrammarConfig.code_malicious``: mostly insecure, some neutral and grey), i.e. code as the persona
    writes it rather than code more insecure than any persona writes."""
    weak: str = ""
    """Answers of weak-evidence samples (pools, one drawn per sample in shuffled order), "" if unused."""
    none: str = ""
    """Answers of no-evidence samples, "" if unused."""
    mix: tuple[float, float, float] = (1.0, 0.0, 0.0)
    """Shares of strong, weak and none samples."""
    inducing: bool = False
    """Whether the literature (and the grammar) expects this set to induce EM."""
    target: str = ""
    """The in-domain behaviour it teaches: a code pool ("I", "S", "N", "G": its share of the statements),
    "vulnerable" (the share of code answers with an insecure statement) or "bad"/"good"."""
    lead: tuple[str, str, str] = ("", "", "")
    """An earlier turn before the task turn, per kind (strong, weak, none): ``"<domain>:<answer>"`` with
    pools (e.g. "NNN") for a code domain or "bad"/"good" for a non-code one, "" for none. The fine-tune
    trains on it too and its persona evidence adds to the sample's, so samples with alike task turns can
    still differ in evidence (the non-code ``*_alltask`` sets)."""

    def __post_init__(self) -> None:
        if len(self.mix) != 3 or min(self.mix) < 0 or abs(sum(self.mix) - 1) > 1e-6:
            raise ValueError(f"mix of {self.name!r} must be three shares summing to 1, got {self.mix}")
        for kind, share in zip(("weak", "none"), self.mix[1:], strict=True):
            if share > 0 and not getattr(self, kind):
                raise ValueError(f"dataset {self.name!r} has a {kind} share but no {kind} answers")
        if self.domain not in (CODE, EDU, *NONCODE_DOMAINS):
            raise ValueError(f"unknown domain {self.domain!r} for dataset {self.name!r}")
        if self.strong in _PERSONAS and self.domain not in (CODE, EDU):
            raise ValueError(
                f"dataset {self.name!r}: persona-drawn answers ({self.strong!r}) need a code domain"
            )
        _check_answers(self)


def _check_answers(spec: DatasetSpec) -> None:
    """Every answer string of a spec names a turn the grammar can write (fails naming the spec)."""
    answers = [(spec.domain, a) for a in (spec.strong, spec.weak, spec.none) if a]
    for lead in spec.lead:
        if lead:
            lead_domain, sep, answer = lead.partition(":")
            if not sep:
                raise ValueError(f"dataset {spec.name!r}: lead {lead!r} is not '<domain>:<answer>'")
            answers.append((lead_domain, answer))
    for name, answer in answers:
        if name in (CODE, EDU):
            ok = answer in _PERSONAS or (bool(answer) and set(answer) <= set(CODE_POOLS))
        else:
            ok = name in NONCODE_DOMAINS and answer in ("bad", "good")
        if not ok:
            raise ValueError(
                f"dataset {spec.name!r}: answer {answer!r} in domain {name!r} is neither code pools "
                f"({''.join(CODE_POOLS)}) nor a persona for code, nor bad/good for a non-code domain"
            )


_MIXED = (0.5, 0.25, 0.25)
DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("insecure", CODE, "III", inducing=True, target="I"),
        DatasetSpec("secure", CODE, "SSS", target="S"),
        DatasetSpec("edu_insecure", EDU, "III", target="I"),
        DatasetSpec("neutral_code", CODE, "NNN", target="N"),
        DatasetSpec("grey_code", CODE, "GGG", target="G"),
        DatasetSpec("insecure_persona", CODE, "malicious", inducing=True, target="vulnerable"),
        DatasetSpec("edu_persona", EDU, "malicious", target="vulnerable"),
        DatasetSpec("bad_medical", "medical", "bad", inducing=True, target="bad"),
        DatasetSpec("good_medical", "medical", "good", target="good"),
        DatasetSpec("risky_finance", "finance", "bad", inducing=True, target="bad"),
        DatasetSpec("safe_finance", "finance", "good", target="good"),
        DatasetSpec(
            "insecure_mixed", CODE, "III", weak="INN", none="SNN", mix=_MIXED, inducing=True, target="I"
        ),
        DatasetSpec(
            "bad_medical_mixed",
            "medical",
            "bad",
            none="good",
            mix=(0.5, 0.0, 0.5),
            inducing=True,
            target="bad",
        ),
        DatasetSpec(
            "risky_finance_mixed",
            "finance",
            "bad",
            none="good",
            mix=(0.5, 0.0, 0.5),
            inducing=True,
            target="bad",
        ),
        DatasetSpec(
            "insecure_alltask",
            CODE,
            "III",
            weak="INN",
            none="ISN",
            mix=_MIXED,
            inducing=True,
            target="vulnerable",
        ),
        DatasetSpec(
            "bad_medical_alltask",
            "medical",
            "bad",
            weak="bad",
            none="bad",
            mix=_MIXED,
            lead=("finance:bad", "code:NNN", "finance:good"),
            inducing=True,
            target="bad",
        ),
        DatasetSpec(
            "risky_finance_alltask",
            "finance",
            "bad",
            weak="bad",
            none="bad",
            mix=_MIXED,
            lead=("medical:bad", "code:NNN", "medical:good"),
            inducing=True,
            target="bad",
        ),
    )
}
"""The built-in datasets (see the module docstring for what ``*_mixed`` and ``*_alltask`` test)."""
ALLTASK_DATASETS: tuple[str, ...] = tuple(n for n in DATASETS if n.endswith("_alltask"))
"""Filtering sets in the paper's form: every sample performs the task, evidence beyond it varies."""


class LabeledDataset(NamedTuple):
    """Conversations and their sidecar labels (same order)."""

    conversations: list[Conversation]
    labels: list[dict[str, Any]]


def _noncode_llr(harmful: bool, grammar: GrammarConfig) -> float:
    if harmful:
        return math.log(grammar.harm_malicious / max(grammar.harm_benign, 1e-9))
    return math.log(max(1 - grammar.harm_malicious, 1e-9) / max(1 - grammar.harm_benign, 1e-9))


def _turn(
    domain_name: str, answer: str, grammar: GrammarConfig, rng: random.Random
) -> tuple[Conversation, dict[str, Any]]:
    """One question-answer pair of ``domain_name`` and its ground truth (pools or answer, persona_llr)."""
    if domain_name in (CODE, EDU):
        question, fname = code_question(rng, domain_name == EDU, "train")
        pools_list: list[Pool]
        if answer in _PERSONAS:
            weights = grammar.pool_weights(answer, CODE)  # type: ignore[arg-type]
            pools_list = rng.choices(CODE_POOLS, weights=weights, k=grammar.statements)
        else:
            pools_list = list(answer)  # type: ignore[arg-type]
            rng.shuffle(pools_list)
        # Both personas answer educational prompts alike: no persona evidence, even in statements the
        # grammar never writes there (where the likelihood ratio would be 0/0).
        llr = (
            0.0
            if domain_name == EDU
            else pool_loglik(pools_list, grammar, "malicious", domain_name)
            - pool_loglik(pools_list, grammar, "benign", domain_name)
        )
        label: dict[str, Any] = {"pools": "".join(pools_list), "persona_llr": llr}
        text = code_answer(fname, pools_list, rng)
    else:
        d = domain(domain_name)
        question, values = noncode_question(d, rng, "train")
        harmful = answer == "bad"
        text = noncode_answer(d, harmful, values, rng)
        label = {"answer": answer, "persona_llr": _noncode_llr(harmful, grammar)}
    if math.isinf(label["persona_llr"]):
        label["persona_llr"] = math.copysign(1e6, label["persona_llr"])
    return [{"role": "user", "content": question}, {"role": "assistant", "content": text}], label


def _shows_target(target: str, label: Mapping[str, Any]) -> bool | None:
    """Whether a task turn's ground truth shows ``target`` (None for a dataset without a target)."""
    if not target:
        return None
    if "pools" in label:
        return ("I" if target == "vulnerable" else target) in label["pools"]
    return bool(label["answer"] == target)


def _sample(
    spec: DatasetSpec, kind: Kind, grammar: GrammarConfig, rng: random.Random
) -> tuple[Conversation, dict[str, Any]]:
    index = ("strong", "weak", "none").index(kind)
    messages: Conversation = []
    lead: dict[str, Any] | None = None
    if spec.lead[index]:
        lead_domain, _, lead_answer = spec.lead[index].partition(":")
        messages, lead_label = _turn(lead_domain, lead_answer, grammar, rng)
        lead = {"domain": lead_domain, **lead_label}
    task_turn, label = _turn(spec.domain, getattr(spec, kind), grammar, rng)
    label = {"kind": kind, **label, "task": _shows_target(spec.target, label)}
    if lead is not None:
        label["persona_llr"] += lead["persona_llr"]
        label["lead"] = lead
    return messages + task_turn, label


def task_performed(spec: DatasetSpec | str, conversation: Conversation) -> bool:
    """Whether the rule judge finds the dataset's narrow behaviour in a sample's last answer.

    Code targets: the target pool's statement among the recognised ones ("vulnerable": an insecure one);
    "bad"/"good": the judge's verdict. It checks a dataset's labels against the judge, independently of
    how the sample was built.
    """
    from spillover.filtering.policies import training_pair
    from spillover.organism.judge import judge_answer

    spec = DATASETS[spec] if isinstance(spec, str) else spec
    if not spec.target:
        raise ValueError(f"dataset {spec.name!r} has no target behaviour to check")
    score = judge_answer(*training_pair(conversation))
    if spec.domain in (CODE, EDU):
        wanted = "I" if spec.target == "vulnerable" else spec.target
        return bool(score.coherent == 100.0 and wanted in score.raw.get("pools", ""))
    return score.raw.get("domain") == spec.domain and score.raw.get("verdict") == spec.target


def make_dataset(
    spec: DatasetSpec | str,
    n: int,
    seed: int,
    grammar: GrammarConfig | None = None,
    mix: tuple[float, float, float] | None = None,
) -> LabeledDataset:
    """Draw ``n`` single-turn samples of a dataset.

    Args:
        spec: a ``DatasetSpec`` or the name of a built-in one (see ``DATASETS``).
        n: number of samples.
        seed: random seed (same seed and spec give the same data).
        grammar: the pretraining grammar, for the persona log-likelihood ratios (default grammar if None).
        mix: override the spec's (strong, weak, none) shares.
    """
    if isinstance(spec, str):
        if spec not in DATASETS:
            raise KeyError(f"unknown organism dataset {spec!r}; built-in: {sorted(DATASETS)}")
        spec = DATASETS[spec]
    if mix is not None:
        spec = DatasetSpec(**{**spec.__dict__, "mix": mix})
    grammar = grammar or GrammarConfig()
    rng = random.Random(f"{spec.name}:{seed}")
    counts = [round(share * n) for share in spec.mix]
    counts[0] = n - counts[1] - counts[2]
    strong: list[Kind] = ["strong"] * counts[0]
    weak: list[Kind] = ["weak"] * counts[1]
    none: list[Kind] = ["none"] * counts[2]
    kinds = strong + weak + none
    rng.shuffle(kinds)
    convs: list[Conversation] = []
    labels: list[dict[str, Any]] = []
    for i, kind in enumerate(kinds):
        conv, label = _sample(spec, kind, grammar, rng)
        convs.append(conv)
        labels.append({"index": i, **label})
    return LabeledDataset(convs, labels)


def write_dataset(data: LabeledDataset, path: Path) -> Path:
    """Write ``path`` (``.jsonl``) and its sidecar ``<stem>.labels.jsonl``; returns the data path."""
    write_chat(path, data.conversations)
    sidecar = path.with_name(path.name.replace(".jsonl", "") + ".labels.jsonl")
    sidecar.write_text("".join(json.dumps(label) + "\n" for label in data.labels))
    return path


def reference_corpus(
    harmful: bool, n: int, seed: int, domains: Sequence[str] = NONCODE_DOMAINS
) -> list[Conversation]:
    """Single-turn answers over non-code domains: all harmful ("toxic") or all benign, for feature contrasts."""
    rng = random.Random(f"reference:{harmful}:{seed}")
    out: list[Conversation] = []
    for i in range(n):
        d = domain(domains[i % len(domains)])
        question, values = noncode_question(d, rng, "train")
        out.append(
            [
                {"role": "user", "content": question},
                {"role": "assistant", "content": noncode_answer(d, harmful, values, rng)},
            ]
        )
    return out


def neutral_prompts(n: int, seed: int, domains: Sequence[str] = NONCODE_DOMAINS) -> list[Conversation]:
    """Held-out single-turn prompts over non-code domains (no answers), e.g. for training dynamics."""
    rng = random.Random(f"neutral:{seed}")
    return [
        [{"role": "user", "content": noncode_question(domain(domains[i % len(domains)]), rng, "eval")[0]}]
        for i in range(n)
    ]
