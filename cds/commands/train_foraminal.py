"""``cds train foraminal``: the parasagittal foraminal network (cds.train.foraminal).

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
    """Add ``foraminal`` to the ``cds train`` sub-parsers."""
    p = models.add_parser(
        "foraminal",
        help="foraminal narrowing from parasagittal sagittal-T2 crops (needs the shipped sagittal_seg)",
    )
    p.add_argument("--data", type=Path, required=True, help="folder written by `cds synth` (with split.json)")
    p.add_argument("--out", type=Path, default=Path("models/foraminal"), help="model folder to write")
    p.add_argument("--work-dir", type=Path, default=Path("var/train/foraminal"), help="checkpoint and log")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="per-study crop cache (default: <work-dir>/cache); keep it outside the repository",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--ratio-weight", type=float, default=4.0, help="weight of the area-ratio regression")
    p.add_argument("--stem", type=int, default=12, help="channels of the strided stem convolution")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32], help="channels per conv block")
    p.add_argument("--members", type=int, default=1, help="seeded networks averaged (seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU, 2 threads spin-wait)"
    )
    p.add_argument("--max-studies", type=int, default=0, help="first N train/validation studies (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/checkpoint.pt")
    p.add_argument(
        "--cached-only", action="store_true", help="use only the studies whose crops are already cached"
    )
    p.add_argument("--version", default="1.0.0")
    p.set_defaults(handler=run_foraminal)


def run_foraminal(args: argparse.Namespace) -> int:
    from cds.train.foraminal import ForaminalTrainConfig, train_foraminal

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = ForaminalTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        ratio_weight=args.ratio_weight,
        seed=args.seed,
        threads=args.threads,
        stem=args.stem,
        widths=tuple(args.widths),
        members=args.members,
        version=args.version,
    )
    spec = train_foraminal(
        data_root=args.data,
        cache_dir=args.cache_dir or args.work_dir / "cache",
        out_dir=args.out,
        work_dir=args.work_dir,
        config=config,
        resume=args.resume,
        max_studies=args.max_studies,
        cached_only=args.cached_only,
    )
    print(json.dumps({"model": spec.tag, "metrics": dict(spec.metrics)}, indent=2, default=str))
    return 0
