"""Benchmark + evaluation of the rationale writer over the generated finding-set corpus.

Prints, per backend: rationale time p50/p95, tokens/s, model load time, peak RSS, and the
verification figures (model-draft pass rate, retry rate, template-fallback share, delivered texts
failing verification -- must be 0). Writes everything as JSON (--out).

    .venv/bin/python bench/rationale_bench.py --backend template            # all 120 cases, ms
    .venv/bin/python bench/rationale_bench.py --backend local --n 12 --threads 2 --int8   # clauses
    .venv/bin/python bench/rationale_bench.py --backend local --n 12 --threads 2 --int8 --whole
    CDS_RATIONALE_URL=... CDS_RATIONALE_MODEL=... .venv/bin/python bench/rationale_bench.py --backend openai
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _WholeOnly:
    """Hides a backend's per-level clause drafting so that the whole-text path is measured."""

    def __init__(self, backend: Any) -> None:
        self._b = backend
        self.name = backend.name
        self.model_id = backend.model_id

    def generate(self, messages: Any, **kw: Any) -> Any:
        return self._b.generate(messages, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("template", "local", "openai"), default="template")
    ap.add_argument("--n", type=int, default=0, help="cases (default: 120 template, 12 model)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the local model (0: default)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--show", type=int, default=2, help="print this many delivered texts")
    ap.add_argument("--int8", action="store_true", help="dynamic int8 Linear layers (local model)")
    ap.add_argument("--whole", action="store_true", help="draft the whole text, not per-level clauses")
    ap.add_argument("--offset", type=int, default=0, help="skip this many cases (run a corpus in parts)")
    ap.add_argument("--model-file", type=Path, default=None, help="local GGUF instead of the pinned card")
    args = ap.parse_args(argv)

    from cds.config import Settings
    from cds.explain.corpus import DEFAULT_SEED, DEFAULT_SIZE, generate_corpus
    from cds.explain.evaluation import evaluate_corpus

    n = args.n or (DEFAULT_SIZE if args.backend == "template" else 12)
    # Take every k-th case of the standard corpus so a short model run still spans 0-6 findings.
    corpus = generate_corpus(DEFAULT_SIZE if n <= DEFAULT_SIZE else n, args.seed or DEFAULT_SEED)
    step = max(1, len(corpus) // n) if not args.offset else 1
    cases = corpus[args.offset :: step][:n]
    env_settings = Settings.from_env()
    overrides: dict[str, Any] = {"rationale_backend": args.backend, "rationale_threads": args.threads}
    if args.int8:
        overrides["rationale_int8"] = True
    if args.model_file is not None:
        overrides["rationale_model_file"] = args.model_file
    settings = env_settings.with_overrides(**overrides)
    load_before = os.getloadavg()

    rss_before = _peak_rss_mb()
    load_s: float | None = None
    backend: Any = None
    if args.backend != "template":
        from cds.explain.backends.select import backend_for

        t0 = time.perf_counter()
        backend = backend_for(settings)
        if backend is not None and hasattr(backend, "generate"):
            load_s = time.perf_counter() - t0
    if args.whole and backend is not None:
        backend = _WholeOnly(backend)
    report, rationales = evaluate_corpus(cases, backend, settings)
    cpu = sorted(r.timings_ms.get("cpu_ms", 0.0) for r in rationales)
    figures: dict[str, Any] = {
        "backend": args.backend,
        "model_id": getattr(backend, "model_id", None),
        "machine": f"{platform.machine()} {platform.python_version()}",
        "threads": args.threads or None,
        "load_s": round(load_s, 2) if load_s is not None else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_mb_before_model": round(rss_before, 1),
        "drafting": None if backend is None else ("whole" if args.whole else "clauses"),
        "int8": bool(args.int8),
        "offset": args.offset,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_ms_p50": round(statistics.median(cpu), 1) if cpu else None,
        "cpu_ms_p95": round(cpu[min(len(cpu) - 1, int(0.95 * len(cpu)))], 1) if cpu else None,
        **report.to_json(),
    }
    print(f"rationale bench: backend={args.backend} cases={len(cases)} model={figures['model_id']}")
    for key in (
        "load_s",
        "loadavg_before",
        "loadavg_after",
        "rationale_ms_p50",
        "rationale_ms_p95",
        "cpu_ms_p50",
        "cpu_ms_p95",
        "tokens_per_s",
        "peak_rss_mb",
        "model_draft_pass_rate",
        "first_draft_pass_rate",
        "retry_rate",
        "model_share",
        "template_fallback_share",
        "nothing_to_word_share",
        "model_share_of_worded",
        "backend_errors",
        "delivered_failing_verification",
        "violation_counts",
    ):
        print(f"  {key:32s} {figures[key]}")
    for r in rationales[: args.show]:
        print(f"  [{r.writer.value}] {r.text}")
        for rej in r.rejected:
            print(f"    rejected: {rej.text[:160]}... -> {[v.kind.value for v in rej.violations]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"  figures written to {args.out}")
    return 0 if report.delivered_failing_verification == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
