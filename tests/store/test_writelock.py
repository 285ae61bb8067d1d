"""cds.store.writelock: SQLite writers of all processes queue on one file lock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cds.store.db import Database
from cds.store.writelock import WriteLock

#: A second process that tries the lock without waiting and prints whether it got it.
_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
"""


def _probe(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_held_excludes_other_processes_and_is_reentrant(tmp_path: Path) -> None:
    lock = WriteLock(tmp_path / "cds.db")
    assert lock.path == tmp_path / "cds.db.writelock"
    with lock.held():
        assert _probe(lock.path) == "held"
        with lock.held():  # nested in the same thread: no deadlock, still held
            assert _probe(lock.path) == "held"
        assert _probe(lock.path) == "held"  # the inner block did not let go of the file lock
    assert _probe(lock.path) == "free"


def test_threads_of_one_process_queue(tmp_path: Path) -> None:
    lock = WriteLock(tmp_path / "cds.db")
    inside = 0
    most = 0
    guard = threading.Lock()

    def write() -> None:
        nonlocal inside, most
        for _ in range(20):
            with lock.held():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert most == 1


def test_a_forked_child_takes_its_own_lock(tmp_path: Path) -> None:
    from cds.store import writelock

    lock = WriteLock(tmp_path / "cds.db")
    with lock.held():
        pid = os.fork()
        if pid == 0:  # the child: its inherited descriptor shares the parent's lock, so it must reopen
            code = 0
            try:
                import fcntl

                assert lock.path is not None
                queue = writelock._queue(lock.path)
                fcntl.flock(queue.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                code = 1  # got a lock the parent holds: wrong
            except BlockingIOError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_two_locks_on_one_file_in_one_thread_nest(tmp_path: Path) -> None:
    """Two Database objects of one file in one process (the app's and a job runner's): a thread
    holding one may write through the other without waiting on itself."""
    first, second = WriteLock(tmp_path / "cds.db"), WriteLock(tmp_path / "cds.db")
    done = threading.Event()

    def nested() -> None:
        with first.held(), second.held():
            done.set()

    t = threading.Thread(target=nested)
    t.start()
    t.join(timeout=10)
    assert done.is_set()
    assert first.path is not None and _probe(first.path) == "free"


def test_database_write_sessions_hold_it_and_read_sessions_do_not(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cds.db'}")
    assert db.write_lock.path is not None
    try:
        with db.session() as s:
            s.execute(sa.text("SELECT 1"))
            assert _probe(db.write_lock.path) == "held"
        with db.session(readonly=True):
            assert _probe(db.write_lock.path) == "free"
    finally:
        db.dispose()
    assert Database("sqlite://").write_lock.path is None  # in memory: one process, nothing to share


def test_the_lock_file_is_closed_when_no_lock_uses_it(tmp_path: Path) -> None:
    import gc

    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        lock = WriteLock(tmp_path / f"db{n}")
        with lock.held():
            pass
        del lock
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # not one open file per Database ever made
