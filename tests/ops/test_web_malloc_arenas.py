"""docker/gunicorn.conf.py caps glibc's malloc arenas (CDS_WEB_MALLOC_ARENAS, default 2).

Checked in a real process: one that loads the config, then runs 8 threads that each allocate
while the others do, and counts its heaps with malloc_info(). Without the cap glibc gives most of
those threads an arena of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import ctypes, ctypes.util, runpy, sys, tempfile, threading
config = runpy.run_path(sys.argv[1])
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
start = threading.Barrier(8)
def work():
    start.wait()
    for _ in range(20000):  # malloc straight from C: no GIL held, the threads really contend
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
with tempfile.NamedTemporaryFile() as fh:
    fp = libc.fopen(fh.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    heaps = open(fh.name, "rb").read().count(b"<heap nr=")
print(config["malloc_arenas"], heaps)
"""


def _run(env_overrides: dict[str, str]) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "CDS_WEB_MALLOC_ARENAS")}
    env |= env_overrides
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "docker" / "gunicorn.conf.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas")
def test_the_web_config_caps_malloc_arenas_and_can_be_told_not_to() -> None:
    capped, heaps = _run({})
    assert capped == 2 and 1 <= heaps <= 2
    uncapped, heaps_default = _run({"CDS_WEB_MALLOC_ARENAS": "0"})
    assert uncapped == 0 and heaps_default > 2  # the control: contention does make arenas here
    # An operator's MALLOC_ARENA_MAX wins (glibc reads it itself); the config then leaves it alone.
    assert _run({"MALLOC_ARENA_MAX": "3"})[0] == 0
