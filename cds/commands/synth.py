"""`cds synth`: write N synthetic lumbar MRI studies with ground truth and a patient-level split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("synth", help="generate synthetic lumbar spine MRI studies with ground truth")
    add_arguments(p)
    p.set_defaults(handler=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per study)")
    p.add_argument("--n", type=int, default=10, help="number of studies (= patients)")
    p.add_argument("--seed", type=int, default=0, help="data set seed; same seed -> identical files")
    p.add_argument("--split", default="0.7,0.15,0.15", help="train,validation,test fractions")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from cds.synth.dataset import Split, generate_dataset, grade_histogram

    split = Split.parse(args.split)
    parts = generate_dataset(args.out, args.n, args.seed, split, args.workers, not args.no_progress)
    names = [n for v in parts.values() for n in v]
    hist = grade_histogram(args.out, names)
    print(
        json.dumps(
            {"studies": len(names), "split": {k: len(v) for k, v in parts.items()}, "grades": hist}, indent=1
        )
    )
    return 0
