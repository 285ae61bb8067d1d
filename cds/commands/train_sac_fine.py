"""``cds train sac-fine``: the fine dural-sac U-Net (cds.train.sac_fine) for the DSCA and AP diameter.

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
    """Add ``sac-fine`` to the ``cds train`` sub-parsers."""
    p = models.add_parser(
        "sac-fine",
        help="dural sac at 0.4 mm on crops around axial_seg's sac (DSCA and AP diameter)",
    )
    p.add_argument("--data", type=Path, required=True, help="folder written by `cds synth` (with split.json)")
    p.add_argument("--out", type=Path, default=Path("models/sac_fine"), help="model folder to write")
    p.add_argument("--work-dir", type=Path, default=Path("var/train/sac_fine"), help="checkpoint and log")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="per-study crop cache (default: <work-dir>/cache); outside the repository",
    )
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--max-studies", type=int, default=0, help="first N train/validation studies (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/checkpoint.pt")
    p.add_argument("--version", default="1.0.0")
    p.set_defaults(handler=run_sac_fine)


def run_sac_fine(args: argparse.Namespace) -> int:
    from cds.train.sac_fine import SacFineTrainConfig, train_sac_fine

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = SacFineTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        base_channels=args.base_channels,
        depth=args.depth,
        seed=args.seed,
        threads=args.threads,
        version=args.version,
    )
    spec = train_sac_fine(
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
