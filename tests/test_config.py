from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from spillover.config import ConfigError, config_hash, from_dict, load_config, parse_overrides, to_dict


@dataclass(frozen=True)
class Inner:
    r: int = 4
    names: tuple[str, ...] = ("a",)


@dataclass(frozen=True)
class Outer:
    lr: float = 1e-3
    mode: Literal["x", "y"] = "x"
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def test_yaml_plus_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\ninner:\n  r: 8\n")
    cfg = load_config(Outer, path, ["inner.names=[p, q]", "mode=y", "limit=3"])
    assert cfg == Outer(lr=0.5, mode="y", inner=Inner(r=8, names=("p", "q")), limit=3)


def test_int_is_accepted_for_float_but_not_bool_for_int() -> None:
    assert load_config(Outer, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="inner.r: expected an integer"):
        load_config(Outer, None, ["inner.r=true"])


def test_exponent_without_a_dot_is_a_float(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads `lr: 2e-5` as the string "2e-5"; configs write learning rates that way.
    path = tmp_path / "c.yaml"
    path.write_text("lr: 2e-5\n")
    assert load_config(Outer, path).lr == 2e-5
    assert load_config(Outer, None, ["lr=3E-4"]).lr == 3e-4
    for bad in ("fast", "nan", "1e-3x"):
        with pytest.raises(ConfigError, match="lr: expected a number"):
            load_config(Outer, None, [f"lr={bad}"])


def test_unknown_key_names_the_path() -> None:
    with pytest.raises(ConfigError, match=r"inner\.rank"):
        load_config(Outer, None, ["inner.rank=2"])


def test_literal_and_validation_errors() -> None:
    with pytest.raises(ConfigError, match="'z' is not one of"):
        load_config(Outer, {"mode": "z"})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_config(Outer, {"lr": -1})


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["lr"])


def test_hash_is_stable_and_sensitive() -> None:
    assert config_hash(Outer()) == config_hash(load_config(Outer, to_dict(Outer())))
    assert config_hash(Outer()) != config_hash(Outer(lr=2e-3))


@dataclass(frozen=True)
class Section:
    a: int = 1
    b: int = 2


@dataclass(frozen=True)
class WithSections:
    tuned: Section = field(default_factory=lambda: Section(a=10, b=20))
    plain: Section = field(default_factory=Section)


def test_a_partial_nested_section_keeps_the_parents_default_not_the_classes():
    cfg = from_dict(WithSections, {"tuned": {"b": 5}, "plain": {"b": 5}})
    assert cfg.tuned == Section(a=10, b=5)
    assert cfg.plain == Section(a=1, b=5)
