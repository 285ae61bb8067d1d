"""``cds train subarticular``: the lateral recess network (cds.train.subarticular).

Arguments live here (torch-free) so that ``cds --help`` stays fast; the training code is imported
by the handler only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any


def register_model(models: Any) -> None:
    """Add ``subarticular`` to the ``cds train`` sub-parsers."""
    p = models.add_parser(
        "subarticular",
        help="lateral recess stenosis from fine axial crops (needs the shipped segmentations and classifier)",
    )
    p.add_argument("--data", type=Path, required=True, help="folder written by `cds synth` (with split.json)")
    p.add_argument("--out", type=Path, default=Path("models/subarticular"), help="model folder to write")
    p.add_argument("--work-dir", type=Path, default=Path("var/train/subarticular"), help="checkpoint and log")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="per-study crop cache (default: <work-dir>/cache); keep it outside the repository",
    )
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--depth-weight", type=float, default=0.5, help="weight of the recess-depth regression")
    p.add_argument(
        "--widths", type=int, nargs=4, default=[16, 24, 32, 48], help="channels of the four stages"
    )
    p.add_argument(
        "--evidence-head",
        action="store_true",
        help="evidence maps pooled by a smooth maximum (network version 2; what Grad-CAM explains)",
    )
    p.add_argument(
        "--localisation-weight",
        type=float,
        default=0.0,
        help="with --evidence-head: weight of the loss that puts the present map's mass in the cause region",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU, 2 threads spin-wait)"
    )
    p.add_argument("--max-studies", type=int, default=0, help="first N train/validation studies (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/checkpoint.pt")
    p.add_argument("--version", default="1.0.0")
    p.set_defaults(handler=run_subarticular)


def run_subarticular(args: argparse.Namespace) -> int:
    from cds.train.subarticular import SubarticularTrainConfig, train_subarticular

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = SubarticularTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        depth_weight=args.depth_weight,
        seed=args.seed,
        threads=args.threads,
        widths=tuple(args.widths),
        evidence=args.evidence_head,
        localisation_weight=args.localisation_weight,
        version=args.version,
    )
    spec = train_subarticular(
        data_root=args.data,
        cache_dir=args.cache_dir or args.work_dir / "cache",
        out_dir=args.out,
        work_dir=args.work_dir,
        config=config,
        resume=args.resume,
        max_studies=args.max_studies,
    )
    print(json.dumps({"model": spec.tag, "metrics": dict(spec.metrics)}, indent=2, default=str))
    return 0
