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
from typing import Annotated, Any

import typer

from spillover.cli._common import fail
from spillover.data.jsonl import iter_jsonl

app = typer.Typer(
    help="Filter a fine-tuning dataset by closeness to toxic features, or by a random / judge baseline.",
    invoke_without_command=True,
    context_settings={"allow_interspersed_args": True},
)

_GEOMETRY = ("geometry", "toxic_activation", "toxic_subspace", "persona_projection")


def _read_scores(path: Path, n: int) -> list[float]:
    values: list[float] = []
    try:
        for where, item in iter_jsonl(path):
            value = item.get("score") if isinstance(item, dict) else item
            if value is None:
                values.append(float("nan"))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values.append(float(value))
            else:
                raise fail(
                    f'{where}: expected a number or {{"score": number}}, got {json.dumps(item)[:60]!r}'
                )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if len(values) != n:
        raise fail(f"{path} has {len(values)} scores but the dataset has {n} conversations")
    return values


@app.callback(invoke_without_command=True)
def filter_dataset(
    ctx: typer.Context,
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
    if ctx.invoked_subcommand is not None:
        return
    import numpy as np

    from spillover.data.chat import ChatFormatError, load_chat
    from spillover.filtering.policies import random_fraction, top_fraction, write_filter
    from spillover.studies.filtering import METHOD_SCORES

    methods = list(method or (["score"] if scores else ["geometry"]))
    unknown = [m for m in methods if m not in (*METHOD_SCORES, "random", "score")]
    if unknown:
        raise fail(f"unknown --method {unknown}; valid: {[*METHOD_SCORES, 'random', 'score']}")
    if "score" in methods and scores is None:
        raise fail("--method score ranks by precomputed scores; give them with --scores FILE")
    fractions = list(fraction or [0.5])
    if any(not 0 <= f <= 1 for f in fractions):
        raise fail(f"--fraction must be in [0, 1], got {fractions}")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise fail(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
    try:
        convs = load_chat(dataset)
    except (ChatFormatError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    suffix = ".jsonl.gz" if dataset.name.endswith(".gz") else ".jsonl"
    values: dict[str, Any] = {}
    if scores is not None:
        values["score"] = np.array(_read_scores(scores, len(convs)))
    if any(m in _GEOMETRY for m in methods):
        missing = [
            name
            for name, v in (("--model", model), ("--sae", sae), ("--toxic", toxic), ("--benign", benign))
            if v is None
        ]
        if missing:
            raise fail(
                f"geometry scores need {', '.join(missing)} (or use --method random/judge, or --scores)"
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from spillover.filtering.features import sample_features, score_samples, toxic_reference
        from spillover.sae.load import SAELoadError, load_sae

        assert model is not None and sae is not None and toxic is not None and benign is not None
        try:  # before the model loads, so a bad reference file fails fast with its name
            toxic_convs, benign_convs = load_chat(toxic), load_chat(benign)
        except (ChatFormatError, FileNotFoundError) as exc:
            raise fail(str(exc)) from exc
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        hf.eval()
        tokenizer = AutoTokenizer.from_pretrained(model)
        try:
            handle = load_sae(sae, hf)
        except SAELoadError as exc:
            raise fail(str(exc)) from exc
        ref = toxic_reference(hf, tokenizer, toxic_convs, benign_convs, handle, k=toxic_k)
        feats = sample_features(hf, tokenizer, convs, handle)
        values.update(score_samples(feats, ref, handle.decoder()))
    if "judge" in methods:
        from spillover.filtering.policies import judge_harmfulness
        from spillover.judge.base import get_judge

        try:
            values["judge"] = judge_harmfulness(get_judge(judge), convs).scores
        except KeyError as exc:
            raise fail(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(
        json.dumps({k: [None if np.isnan(x) else float(x) for x in v] for k, v in values.items()})
    )
    written = []
    for f in fractions:
        for m in methods:
            if m == "random":
                for s in seed_list:
                    folder = out / m / f"f{f:g}" / f"s{s}"
                    write_filter(
                        folder,
                        convs,
                        random_fraction(len(convs), f, s),
                        None,
                        method=m,
                        fraction=f,
                        extra={"seed": s},
                        suffix=suffix,
                    )
                    written.append(folder)
                continue
            key = METHOD_SCORES.get(m, m)
            folder = out / m / f"f{f:g}"
            write_filter(
                folder,
                convs,
                top_fraction(values[key], f),
                values[key],
                method=m,
                fraction=f,
                extra={"score": key, "source": str(dataset)},
                suffix=suffix,
            )
            written.append(folder)
    for folder in written:
        info = json.loads((folder / "filter.json").read_text())
        typer.echo(f"{folder}: kept {info['n_kept']}, removed {info['n_removed']} ({info['method']})")
