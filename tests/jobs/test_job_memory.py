"""cds.jobs.memory: gc.freeze only in processes that do nothing but run jobs.

The web process (`cds serve` runs a LocalRunner in-process) must never freeze: the freeze would
also catch the request objects in flight at that moment, and frozen objects are never collected.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds.config import Settings
from cds.jobs import memory
from cds.jobs.kinds import JobKind
from cds.jobs.queue import JobQueue
from cds.jobs.registry import HandlerRegistry
from cds.jobs.runner import LocalRunner
from cds.store.db import Database


@pytest.fixture
def freezes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of gc.freeze (not really freezing the test process), with the module's once-flag reset;
    gc.collect is counted too, in the same list as 0s."""
    calls: list[int] = []
    monkeypatch.setattr(memory, "_frozen", False)
    monkeypatch.setattr(memory.gc, "freeze", lambda: calls.append(1))
    real_collect = memory.gc.collect

    def collect(*args: Any) -> int:
        calls.append(0)
        return real_collect(*args)

    monkeypatch.setattr(memory.gc, "collect", collect)
    return calls


def test_default_collects_but_never_freezes(freezes: list[int]) -> None:
    memory.release_job_memory()
    memory.release_job_memory()
    assert freezes == [0, 0]


def test_dedicated_process_freezes_once(freezes: list[int]) -> None:
    memory.release_job_memory(freeze=True)
    memory.release_job_memory(freeze=True)
    assert freezes == [0, 1, 0]


def _run_one_job(db: Database, dedicated: bool | None) -> None:
    registry = HandlerRegistry()
    registry.register(JobKind.EXPLAIN, lambda _ctx: None)
    queue = JobQueue(db)
    queue.enqueue(JobKind.EXPLAIN, "explain:x", {"analysis_id": "x"})
    kw: dict[str, Any] = {} if dedicated is None else {"dedicated_process": dedicated}
    runner = LocalRunner(queue, registry, Settings(), retry_delay_s=0, **kw)
    assert runner.run_until_idle() == 1


def test_in_process_runner_does_not_freeze(db: Database, freezes: list[int]) -> None:
    """The runner `cds serve` starts (start_local_runner: the default) collects after each job only."""
    _run_one_job(db, None)
    assert 0 in freezes and 1 not in freezes


def test_dedicated_runner_freezes(db: Database, freezes: list[int]) -> None:
    _run_one_job(db, True)
    assert freezes.count(1) == 1


def test_cds_worker_runs_a_dedicated_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from cds.commands import worker
    from cds.jobs import runner as runner_module

    seen: dict[str, Any] = {}

    class Spy:
        def __init__(self, *args: Any, **kw: Any) -> None:
            seen.update(kw)

        def run_until_idle(self) -> int:
            return 0

    monkeypatch.setattr(runner_module, "LocalRunner", Spy)
    assert worker._local_worker(Settings(), f"sqlite:///{tmp_path}/w.db", 1, True) == 0
    assert seen["dedicated_process"] is True
