"""Where the chain's stages write, and how they write their small JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spillover.config import to_dict
from spillover.rundir import default_root


def run_root(root: str | Path | None) -> Path:
    """``root``, or the default run root when it is None."""
    return Path(root) if root is not None else default_root()


def write_json(path: Path, data: Any) -> None:
    """``data`` (configs included, via ``to_dict``) as indented UTF-8 JSON."""
    path.write_text(json.dumps(to_dict(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
