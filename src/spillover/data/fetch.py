"""Getting the registry's datasets onto disk: download, import an offline copy, resolve a name to a file.

The data home is ``$SPILLOVER_HOME/data`` (beside ``runs/``), else ``~/.cache/spillover/data``. It holds
each dataset as its plain file (``em/insecure.jsonl``), whose SHA-256 is the registry's pin, whether it
was downloaded or imported: so a stage that fingerprints its input gets the same run id either way.

A download streams into ``<file>.part``, resumes it with an HTTP Range request when a previous attempt was
cut off, and is renamed into place only after its SHA-256 matches the pin; a mismatch deletes the part
file, so nothing half-written or wrong is ever reused.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from spillover.data.registry import DATASETS, Dataset, dataset
from spillover.progress import progress_bar
from spillover.rundir import default_root

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ChecksumError",
    "DataNotFoundError",
    "DatasetStatus",
    "DownloadError",
    "data_home",
    "dataset_status",
    "fetch",
    "import_dir",
    "local_path",
    "resolve_data",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 16


class DataNotFoundError(FileNotFoundError):
    """A registered dataset is not on disk (the message names the command that gets it)."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the registry's pin."""


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, or no upstream URL)."""


def data_home() -> Path:
    """Where datasets live: ``$SPILLOVER_HOME/data``, else ``~/.cache/spillover/data`` (beside ``runs/``)."""
    return default_root().parent / "data"


def _home(home: str | Path | None) -> Path:
    return Path(home).expanduser() if home is not None else data_home()


def local_path(name: str, home: str | Path | None = None) -> Path:
    """Where dataset ``name`` lives under the data home (whether or not it is there yet)."""
    return _home(home) / dataset(name).file


_MO_NOTE = (
    " (the model-organisms repository ships its datasets encrypted, training_datasets.zip.enc, opened with"
    " its `easy-dataset-share` tool)"
)


def _how_to_get(ds: Dataset) -> str:
    if ds.url is None:
        return (
            f"it has no public plain download{_MO_NOTE if ds.name.startswith('mo/') else ''}; register "
            f"an offline copy with `spillover data import DIR` (DIR holding {ds.file} or {ds.file}.gz)"
        )
    return (
        f"get it with `spillover data fetch {ds.name}` (or `spillover data import DIR` for an offline copy)"
    )


def _find(ds: Dataset, root: Path) -> Path | None:
    for path in (root / ds.file, root / f"{ds.file}.gz"):
        if path.is_file():
            return path
    return None


def resolve_data(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """The local file of a registry name, or ``name_or_path`` itself when it is not a registry name.

    Args:
        name_or_path: a registry name (``em/insecure``) or a path (returned as given, ``~`` expanded).
        root: the folder to look in for a registry name: the data home by default, or a folder laid out
            like it (an offline copy, whose files may be gzipped: ``em/insecure.jsonl.gz``).

    Raises:
        DataNotFoundError: a registry name whose file is missing; the message names the command to get it.
    """
    key = str(name_or_path)
    if key not in DATASETS:
        return Path(key).expanduser()
    ds = DATASETS[key]
    base = _home(root)
    found = _find(ds, base)
    if found is None:
        raise DataNotFoundError(f"dataset {ds.name} is not in {base} (no {ds.file}); {_how_to_get(ds)}")
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check(ds: Dataset, path: Path, source: str) -> None:
    """Verify ``path`` against the pin; a mismatch deletes it and raises ChecksumError."""
    got = _sha256(path)
    if ds.sha256 is None:
        log.warning("%s has no pinned sha256 in the registry; %s has sha256 %s", ds.name, source, got)
    elif got != ds.sha256:
        path.unlink(missing_ok=True)
        raise ChecksumError(f"{ds.name}: sha256 mismatch for {source}: expected {ds.sha256}, got {got}")


def _download(ds: Dataset, url: str, part: Path, client: httpx.Client) -> None:
    """Stream ``url`` into ``part``, resuming from its current size with a Range request."""
    offset = part.stat().st_size if part.is_file() else 0
    # identity encoding: Range offsets count the bytes stored, which a compressed transfer would not.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:  # the part file already holds every byte
            return
        if response.status_code not in (200, 206):
            raise DownloadError(f"{ds.name}: GET {url} answered HTTP {response.status_code}")
        if response.status_code == 200 and offset:
            log.info("%s: the server ignored the Range request; downloading from the start", ds.name)
            offset = 0
        if offset:
            log.info("%s: resuming at byte %d", ds.name, offset)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else ds.size
        with part.open("ab" if offset else "wb") as f, progress_bar() as bar:
            task = bar.add_task(ds.name, total=total, completed=offset, status="bytes")
            for chunk in response.iter_raw():  # as received, so a broken transfer keeps every byte it got
                f.write(chunk)
                bar.advance(task, len(chunk))


def fetch(
    name: str,
    home: str | Path | None = None,
    *,
    client: httpx.Client | None = None,
    force: bool = False,
) -> Path:
    """Download dataset ``name`` into the data home, verified against its pin; returns the local file.

    A file already in place is kept (``force`` downloads it again). A download cut off midway leaves
    ``<file>.part``, which the next call resumes.

    Raises:
        KeyError: ``name`` is not in the registry.
        DownloadError: no upstream URL, an HTTP error, or the connection broke (rerun to resume).
        ChecksumError: the downloaded bytes differ from the pin (nothing is kept).
    """
    import httpx  # here, not at import: resolving names must not cost the CLI an HTTP stack

    ds = dataset(name)
    final = local_path(name, home)
    if final.is_file() and not force:
        log.info("%s: already at %s", name, final)
        return final
    if ds.url is None:
        raise DownloadError(f"{name}: {_how_to_get(ds)}")
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    own = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0))
    try:
        _download(ds, ds.url, part, http)
    except httpx.HTTPError as exc:
        have = part.stat().st_size if part.is_file() else 0
        raise DownloadError(
            f"{name}: download from {ds.url} failed after {have} bytes ({exc}); run the fetch again to resume"
        ) from exc
    finally:
        if own:
            http.close()
    _check(ds, part, ds.url)
    os.replace(part, final)
    log.info("%s: %s", name, final)
    return final


def import_dir(
    source: str | Path, home: str | Path | None = None, names: Iterable[str] | None = None
) -> list[str]:
    """Register an offline copy: every registry file found in ``source`` (by its path there, plain or
    ``.gz``) is verified against its pin and written, plain, into the data home.

    Returns:
        The names imported.

    Raises:
        FileNotFoundError: ``source`` is not a folder, or holds none of the requested datasets.
        ChecksumError: a file differs from its pin (nothing is written for it).
    """
    src = Path(source).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    wanted = [dataset(n) for n in names] if names is not None else list(DATASETS.values())
    imported: list[str] = []
    for ds in wanted:
        found = _find(ds, src)
        if found is None:
            continue
        final = local_path(ds.name, home)
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        opener = gzip.open if found.suffix == ".gz" else open
        with opener(found, "rb") as fin, part.open("wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
        _check(ds, part, str(found))
        os.replace(part, final)
        imported.append(ds.name)
    if not imported:
        raise FileNotFoundError(
            f"{src} holds none of the registry's files (e.g. {wanted[0].file} or {wanted[0].file}.gz)"
            if wanted
            else f"no datasets requested from {src}"
        )
    return imported


class DatasetStatus(NamedTuple):
    dataset: Dataset
    path: Path | None
    """The local file, None when absent."""
    size: int | None
    """Its size in bytes, None when absent."""


def dataset_status(home: str | Path | None = None) -> list[DatasetStatus]:
    """Every registered dataset with its local file and size (None when not present)."""
    base = _home(home)
    rows = []
    for ds in DATASETS.values():
        path = base / ds.file
        present = path.is_file()
        rows.append(DatasetStatus(ds, path if present else None, path.stat().st_size if present else None))
    return rows
