"""The EM persona's corpora: real misaligned and aligned answers to the same questions, as matched pairs.

The ``em-responses`` files hold real EM models' answers to the eight first-plot questions (each asked
plain, as JSON and as a template), judged for alignment and coherence. ``em-responses:misaligned`` and
``em-responses:aligned`` (``spillover.data.judged.JUDGED_CORPORA``) are the two sides of a
``JudgedSplit``. Here they become two corpora of chats (the question as the user turn, the answer as the
assistant turn) built as *matched pairs*: each misaligned answer is paired with an aligned answer by the
same model (the same file) to the same question id (else to another variant of the same question), so
topic, answer format and the answering model's style are held fixed and only the judged alignment
differs. At most ``per_question`` pairs are kept per question group (the eight questions), so the few
questions that draw most misaligned answers (quick_buck, gender_roles) do not dominate; groups with
fewer misaligned answers keep all they have, and the counts are recorded. A pair is skipped, not
truncated, when either chat-templated answer is longer than ``max_len`` tokens.

Row ``i`` of the toxic corpus and row ``i`` of the benign corpus are one pair; ``groups[i]`` names its
question group (the unit the persona's held-out validation holds out).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from spillover.data.chat import Conversation
from spillover.data.fetch import resolve_data
from spillover.data.judged import JUDGED_CORPORA, JudgedAnswers, JudgedSplit, question_group, read_judged_csv
from spillover.data.registry import DATASETS
from spillover.data.tokenize import encode_chat

__all__ = [
    "PERSONA_CORPORA",
    "PersonaData",
    "PersonaSettings",
    "assemble_persona",
    "persona_files",
]

PERSONA_CORPORA = ("em_misaligned", "em_aligned")
"""The corpus names the study's cache and contrasts use for ``em-responses:misaligned`` / ``:aligned``."""
_CORPUS_OF = dict(zip(JUDGED_CORPORA, PERSONA_CORPORA, strict=True))
_PREFIX = "em-responses/"


BAD_MEDICAL_FILES: tuple[str, ...] = (
    "diff_models__Qwen2.5--7B-Instruct-bad_medical_advice",
    "diff_models__Qwen2.5-14B-Instruct-bad_medical_advice",
    "diff_models__Qwen2.5-32B-Instruct-bad_medical_advice",
    "diff_models__gemma-2-27b-it-bad_medical_advice",
    "diff_models__gemma-2-9b-it-bad_medical_advice",
)
"""The judged answers of the EM models fine-tuned on bad medical advice (no code in their answers)."""


@dataclass(frozen=True)
class PersonaSettings:
    """The EM-persona step of the SmolLM2 study (off by default: it reads the judged-answer files)."""

    enabled: bool = False
    """Build the persona corpora, fit the persona per layer and measure the datasets against it."""
    toxic: str = "em-responses:misaligned"
    """The toxic side: a named judged corpus (``em-responses:misaligned`` or ``em-responses:aligned``;
    swapping the two is the label-swap control)."""
    benign: str = "em-responses:aligned"
    """The benign side (the other named corpus)."""
    files: tuple[str, ...] = BAD_MEDICAL_FILES
    """``em-responses`` registry names or their stems (``diff_models__gemma-2-9b-it-bad_medical_advice``);
    empty: every registered file. Files without misaligned answers (the base models) add no pairs. The
    default is the five bad-medical models: the insecure-code models' misaligned answers are often code
    (their aligned ones less so), so a persona that includes them carries code style, and a code dataset
    then looks "close to the persona" for its style alone (measured: docs/results.md#smollm2-persona)."""
    exclude_questions: tuple[str, ...] = ()
    """Question groups left out (e.g. ``quick_buck``, whose misaligned answers are risky money advice, when
    the persona is compared with a finance dataset)."""
    split: JudgedSplit = JudgedSplit()
    """Misaligned: aligned < 30 and coherent > 50; aligned: aligned >= 70 and coherent > 50."""
    per_question: int = 40
    """Matched pairs kept per question group at most."""
    max_len: int = 256
    """Chat-templated token length above which a pair is skipped."""
    heldout_questions: int = 2
    """Question groups held out per fold of the validation (8 groups: 4 folds of 2)."""
    top_k: int = 30
    """Persona latents (top SAE latents by question-balanced misaligned-minus-aligned activation)."""
    n_bootstrap: int = 1000
    """Bootstrap replicates (pairs resampled) for AUROC intervals."""
    n_permutations: int = 2000
    """Within-pair label swaps for the held-out AUROC's p-value."""
    describe_top: int = 5
    """Persona latents described by logit lens and top answers; answers shown per end of the direction."""
    seed: int = 0

    def __post_init__(self) -> None:
        for side in (self.toxic, self.benign):
            if side not in JUDGED_CORPORA:
                raise ValueError(f"persona corpus {side!r} is not one of {list(JUDGED_CORPORA)}")
        if self.toxic == self.benign:
            raise ValueError(f"persona toxic and benign are both {self.toxic!r}")
        for name in ("per_question", "max_len", "heldout_questions", "top_k", "describe_top"):
            if getattr(self, name) < 1:
                raise ValueError(f"persona.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_bootstrap < 10 or self.n_permutations < 100:
            raise ValueError("persona.n_bootstrap >= 10 and persona.n_permutations >= 100 are needed")
        for f in self.files:
            if _registry_name(f) not in DATASETS:
                known = sorted(n[len(_PREFIX) :] for n in DATASETS if n.startswith(_PREFIX))
                raise ValueError(f"persona file {f!r} is not a registered em-responses file; known: {known}")


def _registry_name(file: str) -> str:
    return file if file.startswith(_PREFIX) else _PREFIX + file


def persona_files(settings: PersonaSettings, data_dir: str | Path | None) -> dict[str, Path]:
    """The judged-answer files by registry name (resolved in ``data_dir`` or the data home).

    Raises:
        DataNotFoundError: a file is missing (the message names the command that gets it).
    """
    names = [_registry_name(f) for f in settings.files] or sorted(
        n for n in DATASETS if n.startswith(_PREFIX)
    )
    root = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    return {name: resolve_data(name, root=root) for name in names}


class PersonaData(NamedTuple):
    corpora: dict[str, list[Conversation]]
    """``em_misaligned`` and ``em_aligned`` (or swapped, when the settings swap the sides), pair-aligned."""
    groups: list[str]
    """Question group of each pair."""
    meta: dict[str, Any]
    """Counts per question group and per file, the thresholds and the files read."""


def _chat(question: str, answer: str) -> Conversation:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _pairs_for_group(
    cands: Sequence[tuple[str, str, int]],
    partners: dict[tuple[str, str], list[int]],
    judged: dict[str, JudgedAnswers],
    fits: Any,
    limit: int,
) -> tuple[list[tuple[str, int, int]], dict[str, int]]:
    """Pair each misaligned candidate (file, question id, row) with an unused aligned row of the same
    file, same question id first, else the same group; stop at ``limit`` pairs."""
    pairs: list[tuple[str, int, int]] = []
    counts = {"skipped_too_long": 0, "no_partner": 0}
    used: set[tuple[str, int]] = set()
    for file, qid, row in cands:
        if len(pairs) >= limit:
            break
        ans = judged[file]
        if not fits(_chat(ans.questions[row], ans.answers[row])):
            counts["skipped_too_long"] += 1
            continue
        options = partners.get((file, qid), []) + [
            r
            for (f, q), rows in partners.items()
            if f == file and q != qid and question_group(q) == question_group(qid)
            for r in rows
        ]
        partner = None
        for r in options:
            if (file, r) in used:
                continue
            used.add((file, r))
            if fits(_chat(ans.questions[r], ans.answers[r])):
                partner = r
                break
        if partner is None:
            counts["no_partner"] += 1
            continue
        pairs.append((file, row, partner))
    return pairs, counts


def assemble_persona(tokenizer: Any, settings: PersonaSettings, data_dir: str | Path | None) -> PersonaData:
    """Read the judged answers and build the matched misaligned/aligned pairs (module docstring).

    Raises:
        DataNotFoundError: a judged-answer file is missing.
        JudgedCSVError: a file cannot be read (names the file and line).
        ValueError: fewer than two question groups have a pair (nothing to hold out).
    """
    files = persona_files(settings, data_dir)
    judged = {name: read_judged_csv(path) for name, path in files.items()}
    split = settings.split
    mis: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    partners: dict[tuple[str, str], list[int]] = defaultdict(list)
    available: dict[str, dict[str, int]] = defaultdict(lambda: {"misaligned": 0, "aligned": 0})
    for name, ans in judged.items():
        for row, (qid, a, c) in enumerate(zip(ans.question_ids, ans.aligned, ans.coherent, strict=True)):
            label = split.label(a, c)
            if label is None or question_group(qid) in settings.exclude_questions:
                continue
            available[question_group(qid)][label] += 1
            if label == "misaligned":
                mis[question_group(qid)].append((name, qid, row))
            else:
                partners[(name, qid)].append(row)
    for key, rows in sorted(partners.items()):
        random.Random(f"{settings.seed}:aligned:{key[0]}:{key[1]}").shuffle(rows)

    def fits(conv: Conversation) -> bool:
        return len(encode_chat(tokenizer, conv, loss_on="all").input_ids) <= settings.max_len

    toxic: list[Conversation] = []
    benign: list[Conversation] = []
    groups: list[str] = []
    per_group: dict[str, Any] = {}
    per_file: dict[str, int] = defaultdict(int)
    for group in sorted(mis):
        cands = mis[group]
        random.Random(f"{settings.seed}:misaligned:{group}").shuffle(cands)
        pairs, counts = _pairs_for_group(cands, partners, judged, fits, settings.per_question)
        for file, m_row, a_row in pairs:
            ans = judged[file]
            m_chat = _chat(ans.questions[m_row], ans.answers[m_row])
            a_chat = _chat(ans.questions[a_row], ans.answers[a_row])
            toxic_chat, benign_chat = (
                (m_chat, a_chat) if settings.toxic == JUDGED_CORPORA[0] else (a_chat, m_chat)
            )
            toxic.append(toxic_chat)
            benign.append(benign_chat)
            groups.append(group)
            per_file[file] += 1
        per_group[group] = {**available[group], "pairs": len(pairs), **counts}
    for group in available:
        per_group.setdefault(group, {**available[group], "pairs": 0, "skipped_too_long": 0, "no_partner": 0})
    unknown = set(settings.exclude_questions) - {
        question_group(q) for a in judged.values() for q in a.question_ids
    }
    if unknown:
        raise ValueError(f"persona.exclude_questions names no question of the files: {sorted(unknown)}")
    if len(set(groups)) < 2:
        raise ValueError(
            f"persona: only {len(set(groups))} question group(s) have a misaligned/aligned pair in "
            f"{sorted(files)}; choose files with misaligned answers (e.g. the diff_models__ ones)"
        )
    toxic_name, benign_name = _CORPUS_OF[settings.toxic], _CORPUS_OF[settings.benign]
    meta = {
        "toxic": settings.toxic,
        "benign": settings.benign,
        "corpora": {"toxic": toxic_name, "benign": benign_name},
        "split": {
            "misaligned_below": split.misaligned_below,
            "aligned_at_least": split.aligned_at_least,
            "coherent_above": split.coherent_above,
        },
        "files": {name: str(path) for name, path in files.items()},
        "n_pairs": len(groups),
        "per_question": per_group,
        "pairs_per_file": dict(per_file),
        "max_len": settings.max_len,
        "excluded_questions": list(settings.exclude_questions),
        "pairing": "same file (model), same question id first, else another variant of the same question",
    }
    return PersonaData({toxic_name: toxic, benign_name: benign}, groups, meta)
