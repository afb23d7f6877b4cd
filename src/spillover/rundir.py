"""Content-addressed run directories: the one caching mechanism every stage uses.

A stage's folder is ``root/<stage>/<hash>``, where the hash covers the stage name, its fully resolved
config, fingerprints of its inputs (file contents; for another stage's folder, that folder's run id) and
the stage's code version (``STAGE_VERSIONS``), so a fix that changes what a stage computes from the same
config does not reuse folders computed before it.
The stage writes into a private temporary folder; only when it returns are ``config.json``,
``manifest.json`` and the completion marker written and the folder moved into place atomically.
So a finished stage is reused as is, ``force=True`` recomputes it, and an interrupted stage leaves
nothing that looks finished: the next call starts it again from scratch.

A temporary folder is named after its owner (``.<run id>.tmp-<host>-<pid>-<token>``), so a killed
stage's leftover is removed by the next run of that stage on the same host once its process is gone,
while a concurrent run's folder (a live process, or another host) is left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from spillover.config import config_hash, to_dict

__all__ = [
    "COMPLETE_MARKER",
    "STAGE_VERSIONS",
    "default_root",
    "fingerprint",
    "git_revision",
    "is_complete",
    "read_config",
    "remove_stale_temps",
    "run_id",
    "run_stage",
]

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
_PACKAGES = ("spillover", "torch", "transformers", "peft", "sae-lens", "safetensors", "numpy")


STAGE_VERSIONS: dict[str, int] = {
    # organism_eval 2, dynamics 2: a LoRA adapter on the tied lm_head is merged into an untied copy
    # (before, the merge also moved the input embeddings, so the evaluated model was not the trained one).
    # organism_eval 3: eval.json also holds em_probability, the exact harmful-branch probability.
    # dynamics 3: dynamics.json also holds that exact probability per checkpoint.
    "organism_eval": 3,
    "dynamics": 3,
    # metrics 2: rate intervals from the Jeffreys posterior (before: [0, 0] when no answer was misaligned);
    # computing them exactly later removed n_boot and seed from its config, which changes the hash by itself.
    # metrics 3: metrics.json gains misaligned_of_all (unscored answers in the denominator) and per-column
    # score means.
    "metrics": 3,
}
"""Code version per stage name, 1 when absent: bump it when a change alters a stage's outputs for the same
config and inputs. Version 1 leaves the hash as it was before versions existed (no cache is invalidated)."""


def default_root() -> Path:
    """Where run directories live: ``$SPILLOVER_HOME/runs``, else ``~/.cache/spillover/runs``."""
    home = os.environ.get("SPILLOVER_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "spillover"
    return base / "runs"


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a finished stage folder (its marker was written last)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def read_config(path: str | Path) -> dict[str, Any]:
    """The resolved config a finished stage saved."""
    return json.loads((Path(path) / "config.json").read_text())


def _hash_file(path: Path, h: Any) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def fingerprint(value: Any) -> str:
    """A stable identity for a stage input.

    A ``Path`` to a finished stage folder is identified by its completion marker: its run id (which
    already hashes everything that produced it), plus a fresh token when the stage was recomputed with
    ``force`` over a finished folder (same folder, new outputs), so the stages that read it get new ids.
    A first computation has no token: folder names stay a pure function of configs and inputs, equal on
    every machine. Any other ``Path`` is identified by the SHA-256 of its contents and relative names; anything
    else (strings included) by its JSON form.
    """
    if isinstance(value, Path):
        path = value
        if path.is_dir() and is_complete(path):
            return "run:" + (path / COMPLETE_MARKER).read_text().strip()
        h = hashlib.sha256()
        if path.is_file():
            _hash_file(path, h)
        elif path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(child.relative_to(path)).encode())
                _hash_file(child, h)
        else:
            raise FileNotFoundError(f"stage input {path} does not exist")
        return "sha256:" + h.hexdigest()[:16]
    return "value:" + config_hash(value, 16)


def run_id(name: str, config: Any, inputs: Mapping[str, Any] | None = None) -> str:
    """The hash that names a stage's folder."""
    fps = {k: fingerprint(v) for k, v in sorted((inputs or {}).items())}
    key: dict[str, Any] = {"stage": name, "config": to_dict(config), "inputs": fps}
    version = STAGE_VERSIONS.get(name, 1)
    if version != 1:
        key["code_version"] = version
    return config_hash(key)


def git_revision() -> str | None:
    """The git commit of the spillover source in use (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


_SECRET_ENV = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def _redacted_argv() -> list[str]:
    """``sys.argv`` with the value of every credential-like environment variable replaced.

    A key pasted into a ``--set`` override would otherwise be written to ``manifest.json``.
    """
    secrets = [
        value
        for name, value in os.environ.items()
        if any(part in name.upper() for part in _SECRET_ENV) and len(value) >= 8
    ]
    out = []
    for arg in sys.argv:
        for secret in secrets:
            arg = arg.replace(secret, "[REDACTED]")
        out.append(arg)
    return out


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return f"cpu ({os.cpu_count()} cores)"


_TMP = re.compile(r"^\.[^.]+\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _host() -> str:
    """This machine's name, reduced to the characters a temporary folder's name may hold."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _temp_folder(stage_dir: Path, rid: str) -> Path:
    """A fresh temporary folder for a run, named after this host and process."""
    return stage_dir / f".{rid}.tmp-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_temps(stage_dir: str | Path) -> list[Path]:
    """Delete the temporary folders in ``stage_dir`` whose owner process on this host is gone.

    A folder of a live process, of another host (it may be running there on a shared disk), or with a
    name this module did not write is kept. Returns the folders removed.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    removed: list[Path] = []
    host = _host()
    for child in stage_dir.iterdir():
        m = _TMP.match(child.name)
        if m is None or m["host"] != host or _alive(int(m["pid"])) or not child.is_dir():
            continue
        shutil.rmtree(child, ignore_errors=True)
        if not child.exists():
            log.info("removed %s, left by a stage run whose process (pid %s) is gone", child, m["pid"])
            removed.append(child)
    return removed


def run_stage(
    name: str,
    config: Any,
    fn: Callable[[Path], None],
    *,
    root: str | Path | None = None,
    inputs: Mapping[str, Any] | None = None,
    force: bool = False,
    seed: int | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Run ``fn`` in a content-addressed folder, or reuse the finished folder.

    Args:
        name: stage name, also the parent folder (``root/name/<hash>``).
        config: the stage's resolved config (dataclass or JSON-able); saved as ``config.json``.
        fn: writes the stage's outputs into the folder it is given. It must not write elsewhere.
        root: run root; defaults to :func:`default_root`.
        inputs: named inputs (files, folders, other stage folders, or plain values) hashed into the id.
        force: recompute even if a finished folder exists.
        seed: recorded in the manifest.
        extra_manifest: more JSON-able facts for ``manifest.json`` (e.g. the judge model).

    Returns:
        The finished stage folder.
    """
    root_path = Path(root) if root is not None else default_root()
    rid = run_id(name, config, inputs)
    final = root_path / name / rid
    remove_stale_temps(final.parent)
    if is_complete(final) and not force:
        log.info("stage %s: reusing %s", name, final)
        return final
    recomputed = is_complete(final)
    if final.exists():
        log.info(
            "stage %s: %s",
            name,
            "recomputing (--force)" if is_complete(final) else "redoing an unfinished run",
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_folder(final.parent, rid)
    tmp.mkdir()
    started = time.time()
    try:
        fn(tmp)
        finished = time.time()
        (tmp / "config.json").write_text(json.dumps(to_dict(config), indent=2, sort_keys=True))
        manifest = {
            "stage": name,
            "run_id": rid,
            "inputs": {k: fingerprint(v) for k, v in sorted((inputs or {}).items())},
            "seed": seed,
            "versions": _versions(),
            "git_revision": git_revision(),
            "device": _device(),
            "command": _redacted_argv(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "wall_time_s": round(finished - started, 3),
            **dict(extra_manifest or {}),
        }
        (tmp / "manifest.json").write_text(json.dumps(to_dict(manifest), indent=2))
        # A forced recompute gets a token, so downstream stages see new outputs (see fingerprint).
        token = f" {uuid.uuid4().hex[:12]}" if recomputed else ""
        (tmp / COMPLETE_MARKER).write_text(f"{rid}{token}\n")
        if is_complete(final) and not recomputed and not force:
            # Another process finished the same run meanwhile (same inputs, same outputs): keep its
            # folder, which a reader may be using, and drop this one.
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("stage %s: %s was finished by another process meanwhile; reusing it", name, final)
            return final
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("stage %s: finished in %.1fs -> %s", name, time.time() - started, final)
    return final
