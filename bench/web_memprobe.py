"""Where does a gunicorn worker's memory go? A diagnostic sampler, for bench/soak_bench.py --probe.

Resident memory of a process is the sum of very different things, and only some of them are
Python objects. Every --probe-every seconds, a daemon thread in each gunicorn worker (started by
bench/web_memprobe_gunicorn.conf.py's post_fork, so the production config itself stays untouched)
appends one JSON line to CDS_MEMPROBE_DIR/<pid>.jsonl with:
- rss / anon / file / shmem KiB from /proc/self/status (RssAnon is heap, RssFile mapped files such
  as the Prometheus multiprocess .db files, RssShmem the SQLite WAL index);
- python_traced: bytes of Python-level allocations (objects included) made since the warm-up and
  still alive (tracemalloc);
- sqlite_used / sqlite_highwater: what SQLite itself holds (page caches, prepared statements),
  from sqlite3_memory_used() of the libsqlite3 the interpreter's sqlite3 module is linked to:
  tracemalloc cannot see it;
- malloc: glibc mallinfo2() over all arenas: in use (uordblks), free but still mapped (fordblks),
  number of arenas, mmapped blocks. Free-but-mapped growth while in-use bytes stay flat is heap
  fragmentation across per-thread arenas, not a leak;
- threads, gc object count, and the entries of the hooks' per-process caches (report presenter,
  parsed results, card texts) with the JSON bytes of the cached reports.
tracemalloc (25 frames deep) starts at the first sample after the warm-up (tracing the imports and
the app start would slow them past gunicorn's start deadline under load); its snapshot then and
at exit are compared per allocation site by `report(dir)`: what is still allocated at the end
was allocated after the warm-up, i.e. the Python part of the growth. Tracing costs CPU: latency
figures of a probed run are not comparable to an unprobed one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ENV_DIR = "CDS_MEMPROBE_DIR"
ENV_EVERY = "CDS_MEMPROBE_EVERY_S"
ENV_WARMUP = "CDS_MEMPROBE_WARMUP_S"
ENV_TRACE = "CDS_MEMPROBE_TRACE"  # "0": components only, no tracemalloc (RSS figures undisturbed)
FRAMES = 25


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> Any:
    """glibc with the prototypes used here (pointers must not go through ctypes' default int)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    return libc


def _sqlite() -> Any:
    import _sqlite3  # noqa: F401  (the shared library the interpreter uses is now loaded)

    lib = ctypes.CDLL("libsqlite3.so.0")
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    return lib


def _arenas(libc: Any, scratch: Path) -> int:
    """Number of glibc malloc arenas (main + per-thread ones), from malloc_info()'s XML."""
    fp = libc.fopen(str(scratch).encode(), b"w")
    if not fp:
        return -1
    try:
        libc.malloc_info(0, fp)
    finally:
        libc.fclose(fp)
    return scratch.read_bytes().count(b"<heap nr=")


def _status_kib() -> dict[str, int]:
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem", "Threads": "threads"}
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            out[keys[name]] = int(value.split()[0])
    return out


def _caches() -> dict[str, int]:
    """Entries of the hooks' per-process caches (found by type among live objects): the report
    presenter (each entry a DiagnosticReport dict plus its JSON text), parsed results, card texts."""
    from cds.hooks import cards
    from cds.hooks.presenter import LinkPresenter
    from cds.hooks.storecatalog import ResultCache

    out = {"report_cache": 0, "report_texts": 0, "report_text_bytes": 0, "result_cache": 0}
    out["card_texts"] = len(cards._TEXTS)
    for obj in gc.get_objects():
        if isinstance(obj, LinkPresenter):
            out["report_cache"] += len(obj._reports)
            out["report_texts"] += len(obj._texts)
            out["report_text_bytes"] += sum(len(t) for t in list(obj._texts.values()))
        elif isinstance(obj, ResultCache):
            out["result_cache"] += len(obj._items)
    return out


def sample(libc: Any, sqlite: Any, started: float, scratch: Path) -> dict[str, Any]:
    info = libc.mallinfo2()
    traced, _peak = tracemalloc.get_traced_memory()
    return {
        **_caches(),
        "tracemalloc_overhead": tracemalloc.get_tracemalloc_memory(),
        "t": round(time.monotonic() - started, 1),
        **_status_kib(),
        "python_traced": traced,
        "sqlite_used": int(sqlite.sqlite3_memory_used()),
        "sqlite_highwater": int(sqlite.sqlite3_memory_highwater(0)),
        "malloc_in_use": info.uordblks + info.hblkhd,
        "malloc_free": info.fordblks,
        "malloc_arena_bytes": info.arena,
        "malloc_mmapped": info.hblkhd,
        "arenas": _arenas(libc, scratch),
        "gc_objects": len(gc.get_objects()),
    }


def start_in_worker() -> None:
    """Start the sampler thread in this (gunicorn worker) process; no-op without CDS_MEMPROBE_DIR."""
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return
    out = Path(folder)
    every = float(os.environ.get(ENV_EVERY, "15"))
    warmup = float(os.environ.get(ENV_WARMUP, "60"))
    libc, sqlite = _libc(), _sqlite()
    pid = os.getpid()
    started = time.monotonic()

    trace = os.environ.get(ENV_TRACE, "1") != "0"

    def dump(tag: str) -> None:
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(out / f"{pid}-{tag}.snap"))

    def loop() -> None:
        first = True
        with (out / f"{pid}.jsonl").open("a") as fh:
            while True:
                time.sleep(every)
                row = sample(libc, sqlite, started, out / f"{pid}.malloc_info.xml")
                if first and row["t"] >= warmup:
                    if trace:
                        tracemalloc.start(FRAMES)  # from here on: what survives is what grew
                        dump("warm")
                    row["warm"] = first = False
                fh.write(json.dumps(row) + "\n")
                fh.flush()

    threading.Thread(target=loop, name="cds-memprobe", daemon=True).start()
    _DUMP_END.append(lambda: dump("end"))


#: Set by start_in_worker: dumps the final snapshot (gunicorn's worker_exit hook calls dump_end()).
_DUMP_END: list[Any] = []


def dump_end() -> None:
    for dump in _DUMP_END:
        dump()


def _frame(frame: tracemalloc.Frame) -> str:
    name = frame.filename.split("site-packages/")[-1].split("/work/main/")[-1]
    return f"{name}:{frame.lineno}"


def report(folder: Path, top: int = 15) -> str:
    """Per worker: first-after-warm-up vs last sample per component, and top growing sites."""
    lines: list[str] = []
    mib = 1024 * 1024
    for series in sorted(folder.glob("*.jsonl")):
        pid = series.stem
        rows = [json.loads(x) for x in series.read_text().splitlines() if x.strip()]
        if len(rows) < 2:
            continue
        a = next((r for r in rows if "warm" in r), rows[0])  # the sample of the warm snapshot
        b = rows[-1]
        minutes = max((b["t"] - a["t"]) / 60.0, 1e-9)
        lines.append(f"worker pid {pid}: t {a['t']:.0f} -> {b['t']:.0f} s ({len(rows)} samples)")

        def row(
            name: str, key: str, scale: float, unit: str, a: Any = a, b: Any = b, minutes: float = minutes
        ) -> None:
            x, y = a.get(key, 0) / scale, b.get(key, 0) / scale
            lines.append(f"  {name:<34} {x:9.2f} -> {y:9.2f} {unit}  ({(y - x) / minutes:+.3f} {unit}/min)")

        row("RSS", "rss", 1024, "MiB")
        row("  anonymous (heap)", "anon", 1024, "MiB")
        row("  file-backed mappings", "file", 1024, "MiB")
        row("  shared memory", "shmem", 1024, "MiB")
        row("python objects (tracemalloc)", "python_traced", mib, "MiB")
        row("SQLite (sqlite3_memory_used)", "sqlite_used", mib, "MiB")
        row("malloc in use (all arenas)", "malloc_in_use", mib, "MiB")
        row("malloc free, still mapped", "malloc_free", mib, "MiB")
        row("  of it tracemalloc's own tables", "tracemalloc_overhead", mib, "MiB")
        row("malloc arenas (count)", "arenas", 1, "")
        row("threads", "threads", 1, "")
        row("gc objects", "gc_objects", 1, "")
        row("cached reports (presenter)", "report_cache", 1, "")
        row("  JSON texts held (one per report)", "report_texts", 1, "")
        row("  their bytes", "report_text_bytes", mib, "MiB")
        row("cached parsed results", "result_cache", 1, "")
        row("cached card texts", "card_texts", 1, "")
        warm, end = folder / f"{pid}-warm.snap", folder / f"{pid}-end.snap"
        if warm.is_file() and end.is_file():
            before = tracemalloc.Snapshot.load(str(warm))
            after = tracemalloc.Snapshot.load(str(end))
            lines.append(f"  top {top} Python allocation sites by growth (warm -> end):")
            for stat in after.compare_to(before, "traceback")[:top]:
                frames = list(stat.traceback)[::-1]  # most recent first: the allocation site
                ours = [f for f in frames[1:] if "/cds/" in f.filename][:2]
                where = " <- ".join(_frame(f) for f in [frames[0], *ours])
                lines.append(f"    {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {where}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(report(Path(sys.argv[1])))
