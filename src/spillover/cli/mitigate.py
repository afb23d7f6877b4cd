"""``spillover mitigate``: filters and fine-tuning arms on one organism dataset, one comparison table.

    # the quick organism: geometry and random removal at 0.1/0.25/0.5/0.75, plus a shorter fine-tune
    spillover mitigate --quick --method geometry --method random --arm short=max_steps=20 --out mitigate/
    # the full demo organism, three seeds, two arms (each --arm adds one override to the named arm)
    spillover mitigate --dataset bad_medical_alltask --seeds 0,1,2 \\
        --arm half_lr=lr=2e-4 --arm early=max_steps=60 --arm baseline
    # every training-time defense (a)-(f) as a ready-made arm, against geometry filtering
    spillover mitigate --quick --method geometry --defense all
    spillover mitigate --defense caft --defense steer --set defense.steer_scale=0.5 --set defense.kl_beta=0.3
    # everything from a YAML file of MitigateConfig keys (filtering: ..., arms: {name: {key: value}})
    spillover mitigate --config mitigate.yaml --set filtering.eval.n_per_domain=50

Defenses (``--defense NAME``, repeatable, or ``all``; settings under ``--set defense.<key>=...``, see
``spillover.studies.defense_arms.DefenseArmsConfig``): ``caft`` (CAFT: toxic SAE latents' decoder rows
projected out during training, Casademunt et al. 2025), ``steer`` (preventative steering along the
toxic-minus-benign persona vector, Chen et al. 2025), ``kl`` (KL to the base model on benign chats) and
``interleave`` (a share of benign chats mixed in; both Kaczér et al. 2025), ``inoculate`` (an inoculation
system prompt during training only, Tan et al. 2025), ``early_stop`` (the checkpoint with the best
in-domain task score on held-out prompts, Prechelt 1998).

A shell over :func:`spillover.studies.mitigate.run_mitigation`. Every option is checked (filters,
fractions, arm overrides against ``FinetuneConfig``) before anything trains. Writes ``mitigate.json``,
``mitigate.md`` and ``frontier.png`` into ``--out``; every fine-tune and evaluation is a cached stage
under the run root, so a rerun computes only what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from spillover.cli._common import RootOpt, fail

app = typer.Typer(add_completion=False)


def _arms(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME`` or ``NAME=key.sub=value`` (repeatable; overrides of one name accumulate)."""
    from spillover.config import ConfigError, deep_merge, parse_overrides

    arms: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, sep, override = spec.partition("=")
        name = name.strip()
        if not name:
            raise fail(f"--arm {spec!r}: give NAME or NAME=key=value")
        arms.setdefault(name, {})
        if sep:
            try:
                arms[name] = deep_merge(arms[name], parse_overrides([override]))
            except ConfigError as exc:
                raise fail(f"--arm {spec!r}: {exc}") from exc
    return arms


def _config(
    config: Path | None,
    overrides: list[str],
    quick: bool,
    flags: dict[str, Any],
) -> Any:
    """The checked MitigateConfig: preset or file, then flags, then --set overrides."""
    from spillover.config import (
        ConfigError,
        deep_merge,
        from_dict,
        parse_overrides,
        read_yaml_mapping,
        to_dict,
    )
    from spillover.studies.mitigate import MitigateConfig

    try:
        base = to_dict(MitigateConfig.quick() if quick else MitigateConfig())
        if config is not None:
            base = deep_merge(base, read_yaml_mapping(config))
        base = deep_merge(base, flags)
        return from_dict(MitigateConfig, deep_merge(base, parse_overrides(overrides)))
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from exc


@app.command(
    help="Filters and fine-tuning arms on one organism dataset: EM, coherence, task retention, one table."
)
def mitigate(
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Organism dataset (default insecure_alltask).")
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="Filter (geometry, persona_projection, judge, random, ...; 'none': arms only); repeatable.",
        ),
    ] = None,
    fraction: Annotated[
        list[float] | None,
        typer.Option("--fraction", help="Share removed, repeatable (default 0.1, 0.25, 0.5, 0.75)."),
    ] = None,
    arm: Annotated[
        list[str] | None,
        typer.Option(
            "--arm", help="Fine-tuning arm NAME or NAME=key=value (a FinetuneConfig override); repeatable."
        ),
    ] = None,
    defense: Annotated[
        list[str] | None,
        typer.Option(
            "--defense",
            help="Defense arm: caft, steer, kl, interleave, inoculate, early_stop, or all; repeatable.",
        ),
    ] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Fine-tuning seeds, comma-separated.")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="The quick demo's tiny organism (CPU minutes).")
    ] = False,
    config: Annotated[Path | None, typer.Option("--config", help="YAML of MitigateConfig keys.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Dotted override, e.g. filtering.eval.n_per_domain=50.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("mitigate"),
    root: RootOpt = None,
) -> None:
    """Run every filter and arm (cached), then write the comparison table and the frontier plot."""
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file, not a folder")
    filtering: dict[str, Any] = {}
    if dataset is not None:
        filtering["dataset"] = dataset
    if method:
        filtering["methods"] = [] if method == ["none"] else method
    if fraction:
        filtering["fractions"] = fraction
        filtering["fraction"] = 0.5 if 0.5 in fraction else fraction[0]
    if seeds is not None:
        try:
            filtering["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError as exc:
            raise fail(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
    flags: dict[str, Any] = {"filtering": filtering} if filtering else {}
    if arm:
        flags["arms"] = _arms(arm)
    if defense:
        flags["defenses"] = defense
    cfg = _config(config, overrides or [], quick, flags)

    from spillover.studies.mitigate import run_mitigation, write_mitigation

    try:
        summary = run_mitigation(
            cfg, root=root, on_run=lambda label: typer.echo(f"mitigate: {label}", err=True)
        )
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from exc
    written = write_mitigation(summary, out)
    typer.echo(written[1].read_text())
    for path in written:
        typer.echo(f"wrote {path}")
