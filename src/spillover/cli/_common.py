"""Options and error handling shared by the stage commands (finetune, generate, judge, metrics)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from spillover.chain.config import PipelineConfig

T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Chain YAML with sections model/finetune/generate/judge/metrics."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Dotted override, e.g. generate.sampling.max_new_tokens=50 (repeatable)."
    ),
]
RootOpt = Annotated[
    Path | None, typer.Option("--root", help="Run root (default: config root, $SPILLOVER_HOME/runs).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute this command's stage even if finished.")]


def fail(message: str) -> typer.Exit:
    """Print a clean error to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (config, files, formats, endpoint) into a clean exit."""
    from spillover.config import ConfigError
    from spillover.judge.openai import JudgeAPIError

    try:
        yield
    except (ConfigError, FileNotFoundError, ValueError, KeyError, ImportError, JudgeAPIError) as exc:
        raise fail(str(exc) if not isinstance(exc, KeyError) else str(exc.args[0])) from exc


def load_cli_config(config: Path | None, overrides: list[str] | None) -> PipelineConfig:
    from spillover.chain.config import load_pipeline_config

    with user_errors():
        return load_pipeline_config(config, overrides or [])


def quiet_http_logs() -> None:
    """httpx logs every request at INFO; thousands of judge calls would drown the useful lines."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def run_reporting(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()


def echo_path(path: Any) -> None:
    """The command's result: its run folder, alone on stdout (scripts capture it)."""
    typer.echo(str(path))
