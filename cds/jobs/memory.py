"""Give a job's memory back after it ran, so that a long-lived worker process stays the same size.

Measured (bench/soak_bench.py, a Celery pool child analysing one study after another): without
this, resident memory grew by ~30 MB per analysis up to ~+50 % and then dropped at random. The
cause: an analysis's arrays (~50 MB) held in a reference cycle. Reference counting cannot free a
cycle; Python's cyclic collector does, but objects that survived the job's many small collections
sit in the oldest generation, which is collected only once enough new long-lived objects have
accumulated (with ~300k objects alive in a worker that is every ~10 jobs). The cycle found (the
viewer's stage recorder) is fixed at its source (cds.viewer.capture); this is the runners' safety
net for any handler, e.g. a failed job whose traceback frames still reference its arrays.

After each job:
1. gc.collect(): frees whatever the job left in cycles, now rather than some jobs later;
2. gc.freeze() once, after the first job, in dedicated worker processes only (`freeze=True`:
   `cds worker`'s runner, Celery pool children): the imports and models alive by then are moved
   out of the collector's sight, so every later full collection scans only new objects (~0 ms
   instead of 100-400 ms for the ~220k objects of torch + the pipeline). Never in the web process
   (`cds serve` runs a LocalRunner in-process): there the freeze would also catch the request
   objects in flight at that moment, and frozen objects are never collected, so their cycles
   would leak for the life of the process;
3. glibc malloc_trim(0): returns the freed pages to the OS (glibc otherwise keeps freed heap
   memory below its top, so resident size would stay at the high-water mark of the largest study).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import threading
from collections.abc import Callable

_lock = threading.Lock()
_frozen = False


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None with another C library (musl, macOS): nothing to trim then."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_job_memory(*, freeze: bool = False) -> None:
    """Collect the finished job's garbage, trim the heap; with `freeze` (only a process that does
    nothing but run jobs may pass it) also freeze the survivors of the first job."""
    global _frozen
    with _lock:  # several runner threads may finish at once: one collection is enough
        gc.collect()
        if freeze and not _frozen:
            gc.freeze()
            _frozen = True
        trim = _malloc_trim()
        if trim is not None:
            trim(0)
