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
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _FileQueue:
    """One process's hold on one lock file: the open file, the re-entrant thread lock and the
    depth of the current holder's nesting."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.lock = threading.RLock()
        self.depth = 0
        weakref.finalize(self, os.close, self.fd)  # closed once no WriteLock uses it


#: Per process and lock file, shared by every WriteLock (every Database) on that file: a thread
#: that writes through two Database objects of one file while the first holds the lock re-enters
#: it instead of waiting on its own flock for ever (flock locks belong to the open file, so a
#: second open file of the same process would wait on the first).
_QUEUES: weakref.WeakValueDictionary[tuple[int, Path], _FileQueue] = weakref.WeakValueDictionary()
_QUEUES_LOCK = threading.Lock()


def _queue(path: Path) -> _FileQueue:
    key = (os.getpid(), path)  # a forked child opens its own file: the parent's holds the parent's lock
    with _QUEUES_LOCK:
        found = _QUEUES.get(key)
        if found is None:
            found = _QUEUES[key] = _FileQueue(path)
        return found


class WriteLock:
    """A cross-process, re-entrant write lock on `<path>.writelock`; `path` None: a no-op."""

    def __init__(self, database_path: Path | None) -> None:
        self.path = None if database_path is None else Path(str(database_path) + ".writelock").absolute()
        self._queue: _FileQueue | None = None  # keeps this process's shared queue (and file) alive
        self._pid = -1

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block (nested blocks in the same thread are free)."""
        if self.path is None:
            yield
            return
        if self._queue is None or self._pid != os.getpid():
            self._queue, self._pid = _queue(self.path), os.getpid()
        queue = self._queue
        with queue.lock:
            queue.depth += 1
            try:
                if queue.depth == 1:
                    fcntl.flock(queue.fd, fcntl.LOCK_EX)  # blocks in the kernel, without the GIL
                try:
                    yield
                finally:
                    if queue.depth == 1:
                        fcntl.flock(queue.fd, fcntl.LOCK_UN)
            finally:
                queue.depth -= 1
