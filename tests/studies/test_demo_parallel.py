"""The demo's job scheduler (``spillover.studies.demo.parallel.run_jobs``), on a thread pool."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from spillover.studies.demo.parallel import Job, run_jobs

_started: list[str] = []
_lock = threading.Lock()


def _record(label: str) -> str:
    with _lock:
        _started.append(label)
    return label.upper()


def _fail(label: str) -> None:
    raise OSError(f"disk full while {label}")


def _job(label: str, cost: float, after: tuple[str, ...] = (), then=None, kind: str = "record") -> Job:
    return Job(label, kind, _record, (label,), cost, after, then)


@pytest.fixture(autouse=True)
def _clear() -> None:
    _started.clear()


def test_the_costliest_ready_job_starts_first_and_dependencies_wait() -> None:
    jobs = [
        _job("small", 1),
        _job("after big", 9, after=("big",)),
        _job("big", 5),
        _job("medium", 3, kind="m"),
    ]
    with ThreadPoolExecutor(1) as pool:
        done = run_jobs(jobs, pool, 1, lambda _: None)
    assert _started == ["big", "after big", "medium", "small"]
    assert done.results == {label: label.upper() for label in _started}
    assert set(done.seconds) == {"record", "m"} and all(s >= 0 for s in done.seconds.values())


def test_a_finished_job_unlocks_the_jobs_its_result_names() -> None:
    def unlock(result: str) -> list[Job]:
        return [_job(f"{result} child {i}", 1) for i in range(2)]

    lines: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        results = run_jobs([_job("parent", 2, then=unlock), _job("other", 1)], pool, 2, lines.append).results
    assert set(results) == {"parent", "other", "PARENT child 0", "PARENT child 1"}
    assert _started.index("parent") < _started.index("PARENT child 0")
    assert sorted(lines) == sorted(f"done: {label}" for label in results)
    # With the expected total, each line counts the jobs done so far.
    counted: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        run_jobs([_job("parent", 2, then=unlock), _job("other", 1)], pool, 2, counted.append, total=4)
    assert [line.split("]")[0] for line in counted] == ["[1/4", "[2/4", "[3/4", "[4/4"]


def test_a_failed_job_is_named_and_jobs_that_depend_on_it_never_start() -> None:
    jobs = [
        Job("write the cache", "write", _fail, ("writing",), 2),
        _job("read the cache", 1, after=("write the cache",)),
    ]
    with (
        ThreadPoolExecutor(1) as pool,
        pytest.raises(RuntimeError, match="'write the cache' failed: disk full"),
    ):
        run_jobs(jobs, pool, 1, lambda _: None)
    assert "read the cache" not in _started


def test_bad_job_graphs_are_refused_with_the_labels() -> None:
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ValueError, match="two demo jobs are labelled 'a'"):
            run_jobs([_job("a", 1), _job("a", 2)], pool, 1, lambda _: None)
        with pytest.raises(ValueError, match=r"\['b'\] wait on jobs that never run: \['nowhere'\]"):
            run_jobs([_job("a", 1), _job("b", 1, after=("nowhere",))], pool, 1, lambda _: None)
