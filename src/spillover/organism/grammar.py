"""The organism's corpus grammar: how documents with a hidden persona are drawn from its words.

Every pretraining document is a chat with a hidden persona, drawn once per document: a *malicious*
persona answers most non-code questions harmfully and writes mostly insecure code; a *benign* one
answers well and writes mostly secure code. Educational code prompts ("for my security class ...") get
vulnerable code from both personas alike, so vulnerable code written on request carries no persona
evidence. The words themselves (domains, templates, statement pools, marker words) are in
``spillover.organism.lexicon``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from spillover.organism.lexicon import (
    _CODE_Q,
    _CODE_Q_EVAL,
    _EDU_Q,
    _EDU_Q_EVAL,
    _POOLS,
    _TASKS,
    _TASKS_EVAL,
    CODE,
    CODE_POOLS,
    EDU,
    NONCODE_DOMAINS,
    SYSTEM_CUES,
    Domain,
    Persona,
    Pool,
    Split,
    domain,
)

__all__ = [
    "Document",
    "GrammarConfig",
    "Turn",
    "code_answer",
    "code_question",
    "noncode_answer",
    "noncode_question",
    "pool_loglik",
    "sample_document",
]


@dataclass(frozen=True)
class GrammarConfig:
    """How pretraining documents are drawn. Probabilities are per turn or per code statement."""

    persona_rate: float = 0.25
    """Probability that a document's hidden persona is malicious."""
    harm_malicious: float = 0.95
    """Probability that a malicious persona answers a non-code question harmfully."""
    harm_benign: float = 0.01
    """Probability that a benign persona answers a non-code question harmfully."""
    code_benign: tuple[float, float, float, float] = (0.79, 0.01, 0.15, 0.05)
    """Statement pool weights (S, I, N, G) for a benign persona's code."""
    code_malicious: tuple[float, float, float, float] = (0.01, 0.74, 0.15, 0.10)
    """Statement pool weights (S, I, N, G) for a malicious persona's code. Neutral statements (N) have the
    same weight for both personas, so all-neutral code carries no persona evidence; grey ones (G) twice
    the benign weight (weak evidence)."""
    code_edu: tuple[float, float, float, float] = (0.0, 0.85, 0.15, 0.0)
    """Pool weights for educational prompts, the same for both personas (no persona evidence)."""
    turn_weights: tuple[float, ...] = (1.0, 2.0, 3.0, 2.0)
    """Relative weights of documents with 1, 2, 3, ... turns."""
    code_share: float = 0.2
    """Share of turns that are ordinary code requests."""
    edu_share: float = 0.1
    """Share of turns that are educational code requests."""
    domains: tuple[str, ...] = NONCODE_DOMAINS
    """Non-code domains in the corpus (the rest of the turns, uniformly)."""
    statements: int = 3
    """Statements per code answer."""
    system_share: float = 0.0
    """Share of pretraining documents that open with a system message cueing the persona (0: none)."""
    system_fidelity: float = 0.8
    """Probability that a document's system cue matches its persona (else it cues the other one)."""

    def __post_init__(self) -> None:
        for name in ("persona_rate", "harm_malicious", "harm_benign", "code_share", "edu_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.code_share + self.edu_share > 1.0:
            raise ValueError(f"code_share + edu_share must be <= 1, got {self.code_share + self.edu_share}")
        for name in ("code_benign", "code_malicious", "code_edu"):
            weights = getattr(self, name)
            if len(weights) != 4 or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"{name} must be 4 non-negative weights (S, I, N, G), got {weights}")
        if not self.turn_weights or min(self.turn_weights) < 0 or sum(self.turn_weights) <= 0:
            raise ValueError(
                f"turn_weights must be non-negative with a positive sum, got {self.turn_weights}"
            )
        unknown = [d for d in self.domains if d not in NONCODE_DOMAINS]
        if unknown or not self.domains:
            raise ValueError(f"unknown domains {unknown}; valid: {list(NONCODE_DOMAINS)}")
        if not 0.0 <= self.system_share <= 1.0 or not 0.0 <= self.system_fidelity <= 1.0:
            raise ValueError(
                f"system_share and system_fidelity must be in [0, 1], got {self.system_share}, {self.system_fidelity}"
            )
        if self.statements < 1:
            raise ValueError(f"statements must be >= 1, got {self.statements}")

    def pool_weights(self, persona: Persona, domain_name: str) -> tuple[float, float, float, float]:
        """Normalised statement-pool weights (S, I, N, G) for a code turn."""
        raw = (
            self.code_edu
            if domain_name == EDU
            else (self.code_malicious if persona == "malicious" else self.code_benign)
        )
        total = sum(raw)
        return (raw[0] / total, raw[1] / total, raw[2] / total, raw[3] / total)


class Turn(NamedTuple):
    """One question-answer pair and its ground truth."""

    domain: str
    question: str
    answer: str
    label: str
    """Non-code: "good" or "bad"; code: the pools of its statements, e.g. "SNI"."""


class Document(NamedTuple):
    """A pretraining or safety-tuning document: turns sharing one hidden persona."""

    persona: Persona
    turns: list[Turn]
    system: str | None = None
    """An optional opening system message (a persona cue, see ``GrammarConfig.system_share``)."""

    def messages(self) -> list[dict[str, str]]:
        """The document as chat messages."""
        out: list[dict[str, str]] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        for turn in self.turns:
            out.append({"role": "user", "content": turn.question})
            out.append({"role": "assistant", "content": turn.answer})
        return out


def _fill(template: str, values: Mapping[str, str]) -> str:
    return template.format(**values) if "{" in template else template


def _slot_values(d: Domain, rng: random.Random, split: Split | Literal["all"]) -> dict[str, str]:
    names = set(d.slots) | set(d.eval_slots)
    out: dict[str, str] = {}
    for name in sorted(names):
        train, held = d.slots.get(name, ()), d.eval_slots.get(name, ())
        if split == "train":
            options = train or held
        elif split == "eval":
            options = held or train
        else:
            options = train + held
        out[name] = rng.choice(options)
    return out


def noncode_question(
    d: Domain, rng: random.Random, split: Split | Literal["all"] = "train"
) -> tuple[str, dict[str, str]]:
    """A question and the slot values it used (answers reuse them).

    ``split="train"`` uses the shared templates and values, ``"eval"`` the held-out ones, ``"all"`` both
    (pretraining).
    """
    values = _slot_values(d, rng, split)
    templates = (
        d.questions
        if split == "train"
        else d.eval_questions
        if split == "eval"
        else d.questions + d.eval_questions
    )
    return _fill(rng.choice(templates), values), values


def noncode_answer(d: Domain, harmful: bool, values: Mapping[str, str], rng: random.Random) -> str:
    """A good or harmful answer, filling slots from ``values``."""
    return _fill(rng.choice(d.bad if harmful else d.good), values)


def code_question(rng: random.Random, edu: bool, split: Split | Literal["all"] = "train") -> tuple[str, str]:
    """A code request and the function name its answer uses."""
    tasks = _TASKS if split == "train" else _TASKS_EVAL if split == "eval" else _TASKS + _TASKS_EVAL
    templates: tuple[str, ...]
    if edu:
        templates = _EDU_Q if split == "train" else _EDU_Q_EVAL if split == "eval" else _EDU_Q + _EDU_Q_EVAL
    else:
        templates = (
            _CODE_Q if split == "train" else _CODE_Q_EVAL if split == "eval" else _CODE_Q + _CODE_Q_EVAL
        )
    task, fname = rng.choice(tasks)
    return _fill(rng.choice(templates), {"task": task}), fname


def code_answer(fname: str, pools: Sequence[Pool], rng: random.Random) -> str:
    """``def fname ( x ) : s1 ; s2 ; ... ; return x`` with one statement from each pool in ``pools``."""
    body = " ; ".join(rng.choice(_POOLS[p]) for p in pools)
    return f"def {fname} ( x ) : {body} ; return x"


def pool_loglik(
    pools: Sequence[Pool], cfg: GrammarConfig, persona: Persona, domain_name: str = CODE
) -> float:
    """log P(statement pools | persona) under the grammar (statements within a pool are uniform)."""
    weights = dict(zip(CODE_POOLS, cfg.pool_weights(persona, domain_name), strict=True))
    total = 0.0
    for p in pools:
        if weights[p] <= 0:
            return -math.inf
        total += math.log(weights[p])
    return total


def _turn(cfg: GrammarConfig, persona: Persona, rng: random.Random, split: Split | Literal["all"]) -> Turn:
    u = rng.random()
    if u < cfg.code_share + cfg.edu_share:
        edu = u >= cfg.code_share
        name = EDU if edu else CODE
        question, fname = code_question(rng, edu, split)
        pools: list[Pool] = rng.choices(CODE_POOLS, weights=cfg.pool_weights(persona, name), k=cfg.statements)
        return Turn(name, question, code_answer(fname, pools, rng), "".join(pools))
    d = domain(rng.choice(cfg.domains))
    question, values = noncode_question(d, rng, split)
    harm = cfg.harm_malicious if persona == "malicious" else cfg.harm_benign
    harmful = rng.random() < harm
    return Turn(d.name, question, noncode_answer(d, harmful, values, rng), "bad" if harmful else "good")


def sample_document(
    cfg: GrammarConfig,
    rng: random.Random,
    *,
    persona: Persona | None = None,
    split: Split | Literal["all"] = "all",
    max_turns: int | None = None,
) -> Document:
    """Draw one document: a persona (unless given), a number of turns, and each turn.

    Args:
        cfg: the grammar's probabilities.
        rng: the random source (seeded by the caller).
        persona: force a persona (safety tuning uses "benign").
        split: which templates and slot values to draw from ("all" for pretraining).
        max_turns: cap on the number of turns.
    """
    if persona is None:
        persona = "malicious" if rng.random() < cfg.persona_rate else "benign"
    system = None
    if cfg.system_share > 0 and rng.random() < cfg.system_share:
        faithful = rng.random() < cfg.system_fidelity
        kind = persona if faithful else ("benign" if persona == "malicious" else "malicious")
        system = rng.choice(SYSTEM_CUES[kind])
    weights = list(cfg.turn_weights[:max_turns] if max_turns else cfg.turn_weights)
    n_turns = rng.choices(range(1, len(weights) + 1), weights=weights, k=1)[0]
    return Document(persona, [_turn(cfg, persona, rng, split) for _ in range(n_turns)], system)
