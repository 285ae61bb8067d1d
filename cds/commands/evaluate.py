"""``cds evaluate --out DIR``: evaluate the shipped models and write DIR/metrics.json + report.html.

Defaults: the synthetic test split /work/data/synth-test (`cds synth --n 220 --seed 9001`; seed
9001 is reserved for testing) and the SPIDER folder ../shared/data/spider-t2-sagittal next to the
repository. Results are cached per study under DIR/cache (or --cache), keyed by the models'
sha256, so an interrupted run resumes and a re-run after a model change recomputes only what
depends on it. Exit codes: 0 written, 2 bad input (folder missing), 3 models missing or corrupt.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from cds.errors import CdsError, ModelError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path("/work/data/synth-test")
DEFAULT_SPIDER = REPO_ROOT.parent / "shared" / "data" / "spider-t2-sagittal"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate the shipped models (metrics.json + report.html)")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder for metrics.json, report.html, PNGs"
    )
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="synthetic test studies (cds synth output)"
    )
    p.add_argument(
        "--spider", type=Path, default=DEFAULT_SPIDER, help="SPIDER PNG folder (patient sub-folders)"
    )
    p.add_argument("--no-spider", action="store_true", help="skip the real-data segmentation figures")
    p.add_argument("--n", type=int, help="evaluate only the first N studies (sorted by name)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1 torch thread each)")
    p.add_argument("--models-dir", type=Path, help="folder holding the model folders (default: models/)")
    p.add_argument("--cache", type=Path, help="record cache folder (default: OUT/cache)")
    p.add_argument(
        "--explain-n",
        type=int,
        help="Grad-CAM faithfulness on the first N studies only (default: all; 0: skip)",
    )
    p.add_argument(
        "--no-replay",
        action="store_true",
        help="recompute the segmentations even when the U-Nets did not change",
    )
    p.add_argument("--commit", help="git commit of the code when run from an exported snapshot (recorded)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(handler=run)


def describe(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (recorded in metrics.json and the report)."""
    parts = ["cds", "evaluate", "--out", str(args.out), "--data", str(args.data)]
    parts += ["--no-spider"] if args.no_spider else ["--spider", str(args.spider)]
    for flag, value in (("--n", args.n), ("--models-dir", args.models_dir), ("--cache", args.cache)):
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--workers", str(args.workers)]
    if args.no_replay:
        parts.append("--no-replay")
    if args.explain_n is not None:
        parts += ["--explain-n", str(args.explain_n)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from cds.evaluation.run import EvaluationConfig, run_evaluation

    if args.n is not None and args.n < 1:
        print("cds evaluate: --n must be at least 1", file=sys.stderr)
        return 2
    cfg = EvaluationConfig(
        out=args.out,
        data=args.data,
        spider=None if args.no_spider else args.spider,
        n=args.n,
        workers=max(1, int(args.workers)),
        models_dir=args.models_dir,
        cache_dir=args.cache,
        explain_n=None if args.explain_n is None else max(0, int(args.explain_n)),
        progress=not args.no_progress,
        command=describe(args),
        commit=args.commit,
        replay=not args.no_replay,
    )
    try:
        metrics = run_evaluation(cfg)
    except ModelError as exc:
        print(f"models unavailable: {exc.message}", file=sys.stderr)
        return 3
    except CdsError as exc:
        print(f"cds evaluate: {exc.message}", file=sys.stderr)
        return 2
    missed = [t for t in metrics["targets"] if t["verdict"] == "MISS"]
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.html'} ({metrics['runtime_s']:.0f} s)")
    for t in metrics["targets"]:
        print(f"  {t['verdict']:<12} {t['target']}: {t['measured']} (wanted {t['wanted']})")
    print(f"{len(missed)} of {len(metrics['targets'])} targets missed")
    return 0
