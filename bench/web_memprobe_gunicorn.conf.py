"""gunicorn config for bench/soak_bench.py --probe: docker/gunicorn.conf.py plus a memory sampler.

Runs the production config unchanged (executed into this module's namespace), then adds a
post_fork hook that starts bench/web_memprobe.py's sampler in every worker. Diagnostic only:
tracemalloc slows the workers down.
"""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH = Path(__file__).resolve().parent
exec(compile((_BENCH.parent / "docker" / "gunicorn.conf.py").read_text(), "docker/gunicorn.conf.py", "exec"))


def post_fork(server: object, worker: object) -> None:
    sys.path.insert(0, str(_BENCH))
    from web_memprobe import start_in_worker

    start_in_worker()


def worker_exit(server: object, worker: object) -> None:
    from web_memprobe import dump_end

    dump_end()
