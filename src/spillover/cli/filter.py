"""``spillover filter``: remove the training samples closest to toxic features (or a baseline's choice).

    # geometry (default score: activation-weighted nearest-toxic cosine), 50% removed
    spillover filter insecure.jsonl --model path/to/hf_model --sae saes/layer_12 \\
        --toxic toxic.jsonl --benign benign.jsonl --out filtered/
    # every geometry score, the judge and random baselines, several fractions
    spillover filter insecure.jsonl --model M --sae S --toxic T --benign B \\
        --method geometry --method persona_projection --method judge --method random \\
        --fraction 0.25 --fraction 0.5 --seeds 0,1,2 --judge organism_rule --out filtered/
    # rank by a score you computed elsewhere (one JSON number per line, or {"score": x} per line)
    spillover filter data.jsonl --scores my_scores.jsonl --out filtered/

Output: ``OUT/<method>/f<fraction>[/s<seed>]/{kept,removed}.jsonl[.gz]`` (the input's format),
``scores.jsonl`` (index, score, rank, removed) and ``filter.json``; ``OUT/scores.json`` holds every
computed score per sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer

from spillover.cli._common import fail

if TYPE_CHECKING:
    import numpy as np

    from spillover.data.chat import Conversation

app = typer.Typer(add_completion=False)

_GEOMETRY = ("geometry", "toxic_activation", "toxic_subspace", "persona_projection")


@app.command(
    help="Filter a fine-tuning dataset by closeness to toxic features, or by a random / judge baseline."
)
def filter_dataset(
    dataset: Annotated[Path, typer.Argument(help="Chat JSONL(.gz) to filter.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("filtered"),
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="geometry (default), toxic_activation, toxic_subspace, persona_projection, judge, random; repeatable.",
        ),
    ] = None,
    fraction: Annotated[
        list[float] | None, typer.Option("--fraction", help="Share removed (repeatable; default 0.5).")
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds of random removal, comma-separated.")] = "0",
    model: Annotated[str | None, typer.Option("--model", help="HF model folder (geometry scores).")] = None,
    sae: Annotated[Path | None, typer.Option("--sae", help="SAELens SAE folder for --model.")] = None,
    toxic: Annotated[Path | None, typer.Option("--toxic", help="Toxic conversations (chat JSONL).")] = None,
    benign: Annotated[
        Path | None, typer.Option("--benign", help="Benign conversations (chat JSONL).")
    ] = None,
    judge: Annotated[
        str, typer.Option("--judge", help="Registered judge for --method judge.")
    ] = "organism_rule",
    scores: Annotated[
        Path | None, typer.Option("--scores", help="Precomputed scores (one per line): rank by these.")
    ] = None,
    toxic_k: Annotated[int | None, typer.Option("--toxic-k", min=1, help="Number of toxic latents.")] = None,
) -> None:
    """Write kept / removed sets and scores for each method and fraction."""
    from spillover.filtering.sets import apply_filters, save_scores

    req = _check(dataset, out, method, fraction, seeds, scores, judge)
    values = dict(req.precomputed)
    if any(m in _GEOMETRY for m in req.methods):
        values.update(_geometry_scores(req.convs, model, sae, toxic, benign, toxic_k))
    if "judge" in req.methods:
        from spillover.filtering.policies import judge_harmfulness
        from spillover.judge.base import get_judge

        values["judge"] = judge_harmfulness(get_judge(judge), req.convs).scores
    out.mkdir(parents=True, exist_ok=True)
    save_scores(out / "scores.json", values)
    suffix = ".jsonl.gz" if dataset.name.endswith(".gz") else ".jsonl"
    written = apply_filters(
        out,
        req.convs,
        methods=req.methods,
        fractions=req.fractions,
        seeds=req.seeds,
        scores=values,
        extra={"source": str(dataset)},
        suffix=suffix,
    )
    for folder in written:
        info = json.loads((folder / "filter.json").read_text())
        typer.echo(f"{folder}: kept {info['n_kept']}, removed {info['n_removed']} ({info['method']})")


class _Request(NamedTuple):
    """The checked options: what to write, and the data (read, since reading is quick)."""

    methods: list[str]
    fractions: list[float]
    seeds: list[int]
    convs: list[Conversation]
    precomputed: dict[str, np.ndarray]


def _check(
    dataset: Path,
    out: Path,
    method: list[str] | None,
    fraction: list[float] | None,
    seeds: str,
    scores: Path | None,
    judge: str,
) -> _Request:
    """Every option that needs no model, checked and read (geometry inputs: :func:`_geometry_scores`)."""
    from spillover.data.chat import ChatFormatError, load_chat
    from spillover.filtering.sets import METHOD_SCORES, read_sample_scores

    methods = list(method or (["score"] if scores else ["geometry"]))
    valid = [*METHOD_SCORES, "random", "score"]
    unknown = [m for m in methods if m not in valid]
    if unknown:
        raise fail(f"unknown --method {unknown}; valid: {valid}")
    if "score" in methods and scores is None:
        raise fail("--method score ranks by precomputed scores; give them with --scores FILE")
    fractions = list(fraction or [0.5])
    if any(not 0 <= f <= 1 for f in fractions):
        raise fail(f"--fraction must be in [0, 1], got {fractions}")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise fail(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
    if "random" in methods and not seed_list:
        raise fail(f"--method random needs at least one seed, got --seeds {seeds!r}")
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file, not a folder")
    if "judge" in methods:
        from spillover.judge.base import available_judges

        if judge not in available_judges():
            raise fail(f"unknown --judge {judge!r}; available: {available_judges()}")
    try:
        convs = load_chat(dataset)
        precomputed = {"score": read_sample_scores(scores, len(convs))} if scores is not None else {}
    except (ChatFormatError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from exc
    return _Request(methods, fractions, seed_list, convs, precomputed)


def _geometry_scores(
    convs: list[Conversation],
    model: str | None,
    sae: Path | None,
    toxic: Path | None,
    benign: Path | None,
    toxic_k: int | None,
) -> dict[str, Any]:
    """Every geometry score, after checking the model, SAE and reference files without loading them."""
    from spillover.data.chat import ChatFormatError, load_chat
    from spillover.filtering.scoring import check_scoring_inputs, score_dataset
    from spillover.sae.load import SAELoadError

    named = (("--model", model), ("--sae", sae), ("--toxic", toxic), ("--benign", benign))
    missing = [name for name, v in named if v is None]
    if missing:
        raise fail(f"geometry scores need {', '.join(missing)} (or use --method random/judge, or --scores)")
    assert model is not None and sae is not None and toxic is not None and benign is not None
    try:  # before the model loads, so a bad input fails fast with its name
        check_scoring_inputs(model, sae, toxic, benign)
        toxic_convs, benign_convs = load_chat(toxic), load_chat(benign)
    except (ChatFormatError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from exc
    try:
        return score_dataset(model, sae, convs, toxic_convs, benign_convs, toxic_k=toxic_k).scores
    except SAELoadError as exc:
        raise fail(str(exc)) from exc
