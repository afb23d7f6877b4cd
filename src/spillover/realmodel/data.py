"""The SmolLM2 study's data: disjoint, length-checked slices of the real EM datasets.

Corpora (the names every result of the study uses):

* ``bad_medical`` / ``good_medical``: the same ``n_per_dataset`` prompts (the two files are paired line
  by line), subtly harmful vs correct answers. The only clean inducing/control pair available.
* ``risky_financial``, ``insecure``: ``n_per_dataset`` each (inducing; no control exists here).
* ``benign_reference``, ``benign_contrast``, ``jailbroken_control``: three disjoint slices of
  ``em/jailbroken`` (mostly continuations of web text under an "always execute instructions" system
  prompt, with a small share of harmful compliance). The first is the reference that dataset features and
  mean shifts are measured against; the second is the benign side of the toxic sets (a different slice, so
  the two sides of a cosine share no sampling noise); the third is a non-inducing "dataset" whose features
  are selected exactly like an inducing dataset's (a non-inducing control).
* ``finetune``: ``n_finetune`` bad-medical samples whose prompts are not in the geometry slice.

Samples are drawn at random (seeded) and a sample is *skipped*, not truncated, when its chat-templated
length exceeds ``max_len`` tokens, so every answer is analysed whole; the skip counts are recorded (they
matter for ``insecure``, whose code prompts are long). Nothing here copies the data: the registry's
datasets are read from the data home (``spillover data fetch`` / ``spillover data import`` fill it), or
from ``data_dir``, an offline copy laid out like it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from spillover.data.chat import Conversation, load_chat
from spillover.data.fetch import DataNotFoundError, data_home, resolve_data
from spillover.data.tokenize import encode_chat

__all__ = [
    "BENIGN_SLICES",
    "DATA_FILES",
    "StudyData",
    "StudyDataConfig",
    "assemble_data",
    "resolve_data_files",
]

log = logging.getLogger(__name__)

DATA_FILES = {
    "bad_medical": "mo/bad_medical_advice",
    "good_medical": "mo/good_medical_advice",
    "risky_financial": "mo/risky_financial_advice",
    "insecure": "em/insecure",
    "jailbroken": "em/jailbroken",
}
"""Corpus name -> dataset registry name."""
BENIGN_SLICES = ("benign_reference", "benign_contrast", "jailbroken_control")
"""The three disjoint slices of em/jailbroken, in the order they are drawn."""


@dataclass(frozen=True)
class StudyDataConfig:
    """Which samples of the real EM datasets the study reads."""

    data_dir: str | None = None
    """An offline copy laid out like the data home (``em/insecure.jsonl[.gz]``, ``model-organisms/...``);
    None: the data home. Relative paths resolve against the working directory."""
    n_per_dataset: int = 150
    """Samples of each EM dataset (medical: prompts, each with its bad and its good answer)."""
    n_benign: int = 150
    """Samples of each of the three jailbroken slices."""
    max_len: int = 256
    """Chat-templated token length above which a sample is skipped (never truncated)."""
    n_finetune: int = 240
    """Bad-medical samples for the LoRA fine-tune (prompts disjoint from the geometry slice)."""
    finetune_max_len: int = 160
    """Length limit for the fine-tuning samples (skipped above it, like ``max_len``)."""
    seed: int = 0
    """Seeds the random draw of samples."""

    def __post_init__(self) -> None:
        for name in ("n_per_dataset", "n_benign", "max_len", "finetune_max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_finetune < 0:
            raise ValueError(f"n_finetune must be >= 0, got {self.n_finetune}")


class StudyData(NamedTuple):
    corpora: dict[str, list[Conversation]]
    """Corpus name -> conversations (see the module docstring for the names)."""
    finetune: list[Conversation]
    """Bad-medical fine-tuning samples."""
    meta: dict[str, Any]
    """Per corpus: file, lines in the file, samples kept, samples skipped for length, kept line indices."""


def resolve_data_files(data_dir: str | Path | None) -> dict[str, Path]:
    """Each corpus' file, found in ``data_dir`` (None: the data home), with one error naming every missing
    dataset and the command that gets it."""
    root = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    files: dict[str, Path] = {}
    missing: list[str] = []
    for corpus, name in DATA_FILES.items():
        try:
            files[corpus] = resolve_data(name, root=root)
        except DataNotFoundError as exc:
            missing.append(str(exc))
    if missing:
        raise DataNotFoundError(
            "the study's EM data is missing (or pass an offline copy with --data-dir):\n" + "\n".join(missing)
        )
    return files


def _fits(tokenizer: Any, conversation: Conversation, max_len: int) -> bool:
    return len(encode_chat(tokenizer, conversation, loss_on="all").input_ids) <= max_len


def _draw(order: Iterator[int], n: int, ok: Callable[[int], bool]) -> tuple[list[int], int]:
    """The next ``n`` indices of ``order`` that pass ``ok``; also the count skipped on the way."""
    kept: list[int] = []
    skipped = 0
    while len(kept) < n:
        i = next(order, None)
        if i is None:
            break
        if ok(i):
            kept.append(i)
        else:
            skipped += 1
    return kept, skipped


def _shuffled(n: int, seed: int, name: str) -> Iterator[int]:
    order = list(range(n))
    random.Random(f"{seed}:{name}").shuffle(order)
    return iter(order)


def assemble_data(tokenizer: Any, cfg: StudyDataConfig) -> StudyData:
    """Draw the study's corpora and fine-tuning set from the real EM datasets.

    Args:
        tokenizer: the model's tokenizer (lengths are counted with its chat template).
        cfg: sizes, length limit and seed.

    Raises:
        FileNotFoundError: the data folder or one of its files is missing.
        ValueError: a file has too few samples that fit ``max_len`` (the message says how many).
    """
    files = resolve_data_files(cfg.data_dir)
    raw = {name: load_chat(path) for name, path in files.items()}
    bad, good = raw["bad_medical"], raw["good_medical"]
    if len(bad) != len(good) or any(
        b[0]["content"] != g[0]["content"] for b, g in zip(bad, good, strict=True)
    ):
        raise ValueError(
            f"{DATA_FILES['bad_medical']} and {DATA_FILES['good_medical']} are not paired line by line "
            "(same user prompt on the same line); the medical contrast needs the paired release"
        )
    corpora: dict[str, list[Conversation]] = {}
    meta: dict[str, Any] = {}

    def record(name: str, source: str, kept: Sequence[int], skipped: int, limit: int) -> None:
        meta[name] = {
            "file": DATA_FILES[source],
            "lines_in_file": len(raw[source]),
            "n": len(kept),
            "skipped_too_long": skipped,
            "max_len": limit,
            "line_indices": list(kept),
        }

    def need(name: str, kept: Sequence[int], n: int, skipped: int) -> None:
        if len(kept) < n:
            raise ValueError(
                f"{name}: only {len(kept)} samples fit max_len (wanted {n}, {skipped} skipped as too long); "
                "raise data.max_len or lower the sample counts"
            )

    # Medical: a prompt is kept only when both its answers fit, so the pair stays aligned.
    med_order = _shuffled(len(bad), cfg.seed, "medical")
    med, skipped = _draw(
        med_order,
        cfg.n_per_dataset,
        lambda i: _fits(tokenizer, bad[i], cfg.max_len) and _fits(tokenizer, good[i], cfg.max_len),
    )
    need("bad/good_medical", med, cfg.n_per_dataset, skipped)
    corpora["bad_medical"] = [bad[i] for i in med]
    corpora["good_medical"] = [good[i] for i in med]
    record("bad_medical", "bad_medical", med, skipped, cfg.max_len)
    record("good_medical", "good_medical", med, skipped, cfg.max_len)
    ft, ft_skipped = _draw(
        med_order, cfg.n_finetune, lambda i: _fits(tokenizer, bad[i], cfg.finetune_max_len)
    )
    need("finetune (bad_medical)", ft, cfg.n_finetune, ft_skipped)
    record("finetune", "bad_medical", ft, ft_skipped, cfg.finetune_max_len)
    for name in ("risky_financial", "insecure"):
        convs = raw[name]
        kept, skipped = _draw(
            _shuffled(len(convs), cfg.seed, name),
            cfg.n_per_dataset,
            lambda i, convs=convs: _fits(tokenizer, convs[i], cfg.max_len),  # type: ignore[misc]
        )
        need(name, kept, cfg.n_per_dataset, skipped)
        corpora[name] = [convs[i] for i in kept]
        record(name, name, kept, skipped, cfg.max_len)
    jail = raw["jailbroken"]
    jail_order = _shuffled(len(jail), cfg.seed, "jailbroken")
    for name in BENIGN_SLICES:
        kept, skipped = _draw(jail_order, cfg.n_benign, lambda i: _fits(tokenizer, jail[i], cfg.max_len))
        need(name, kept, cfg.n_benign, skipped)
        corpora[name] = [jail[i] for i in kept]
        record(name, "jailbroken", kept, skipped, cfg.max_len)
    meta["data_dir"] = str(Path(cfg.data_dir).expanduser().resolve() if cfg.data_dir else data_home())
    for name, m in meta.items():
        if isinstance(m, dict):
            log.info(
                "%s: %d samples from %s (%d skipped as too long)",
                name,
                m["n"],
                m["file"],
                m["skipped_too_long"],
            )
    return StudyData(corpora, [bad[i] for i in ft], meta)
