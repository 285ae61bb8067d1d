"""One queue for the writers of a SQLite file: an OS file lock taken around each write.

Why. SQLite lets one writer in at a time, and a writer that finds the database locked does not
wait in a queue: its busy handler sleeps and retries, in steps of 1, 2, 5, 10, 15, 20, 25, ... up
to 100 ms. Under the hooks' load (every call writes its jti claim and its audit row, so with 64
clients there are thousands of write statements a second from several gunicorn processes) the
lock is often taken, and a call that loses a few rounds of that schedule waits tens of
milliseconds for a statement that needs tens of microseconds. That, not CPU, made the tail:
bench/hooks_bench.py at 64 clients, p95 104-123 ms and p99 220-250 ms without this lock, 78-80
and 93-96 ms with it (same machine, same hour).

With the lock, writers wait in the kernel (flock) and the next one is woken the moment the
previous one lets go. flock is per open file description, so threads of one process share it:
a re-entrant thread lock queues them first, and only the outermost holder takes the file lock.
A process that dies holding it releases it (the kernel closes its files). The file sits next to
the database ("<database>.writelock"); SQLite's own locking still guarantees correctness, this
only decides who goes next, so a writer that does not take it (the migration runner, sqlite3 on
the command line) is merely back on the busy handler.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteLock:
    """A cross-process, re-entrant write lock on `<path>.writelock`; `path` None: a no-op."""

    def __init__(self, database_path: Path | None) -> None:
        self.path = None if database_path is None else Path(str(database_path) + ".writelock")
        self._pid = -1
        self._fd: int | None = None
        self._lock = threading.RLock()
        self._depth = 0

    def _descriptor(self) -> int:
        """This process's own open file (one opened before a fork would share the lock with the
        parent: flock locks belong to the open file description)."""
        assert self.path is not None
        if self._pid != os.getpid():
            self._lock = threading.RLock()
            self._depth = 0
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        assert self._fd is not None
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block (nested blocks in the same thread are free)."""
        if self.path is None:
            yield
            return
        fd = self._descriptor()
        lock = self._lock
        with lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks in the kernel, without the GIL
                try:
                    yield
                finally:
                    if self._depth == 1:
                        fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                self._depth -= 1
