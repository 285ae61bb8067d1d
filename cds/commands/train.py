"""``cds train sagittal-seg``: train the sagittal segmentation U-Net and write weights + model card.

Heavy imports (torch, the training code) happen inside the handler so that ``cds --help`` and the
other subcommands stay fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cds.commands import train_pipeline


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("train", help="train a model shipped in models/")
    models = parser.add_subparsers(dest="model", required=True)
    seg = models.add_parser(
        "sagittal-seg",
        help="sagittal T2 segmentation (disc, vertebra, canal) on SPIDER and/or synthetic studies",
    )
    seg.add_argument("--data-spider", type=Path, help="SPIDER PNG folder (patient sub-folders)")
    seg.add_argument(
        "--data-synth", type=Path, action="append", help="folder written by `cds synth` (repeatable)"
    )
    seg.add_argument("--out", type=Path, default=Path("models/sagittal_seg"), help="model folder to write")
    seg.add_argument("--work-dir", type=Path, help="checkpoints and logs (default: var/train/<out name>)")
    seg.add_argument("--epochs", type=int, default=24)
    seg.add_argument("--steps-per-epoch", type=int, default=50)
    seg.add_argument("--batch-size", type=int, default=8)
    seg.add_argument("--lr", type=float, default=2e-3)
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--holdout", type=int, default=6, help="SPIDER patients held out for evaluation")
    seg.add_argument(
        "--no-spider-train",
        action="store_true",
        help="train on synthetic data only; evaluate on ALL SPIDER patients (realism check)",
    )
    seg.add_argument("--synth-fraction", type=float, default=0.5, help="share of synthetic slices per batch")
    seg.add_argument("--max-synth-studies", type=int, default=0, help="0 = all studies in --data-synth")
    seg.add_argument("--synth-slices", type=int, default=7, help="central sagittal slices used per study")
    seg.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    seg.add_argument("--init", type=Path, help="start from these weights: a model folder or a checkpoint.pt")
    seg.add_argument("--version", default="1.0.0")
    seg.set_defaults(handler=_run_sagittal)
    train_pipeline.register_models(models)  # axial-seg, classifier (owner: pipeline)


def _run_sagittal(args: argparse.Namespace) -> int:
    from cds.train.sagittal import TrainConfig, train_sagittal
    from cds.train.synth_data import SynthSource

    if args.data_spider is None and args.data_synth is None:
        raise SystemExit("give --data-spider and/or --data-synth")
    config = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        n_holdout=args.holdout,
        spider_train=not args.no_spider_train,
        synth_fraction=args.synth_fraction,
        threads=args.threads,
        version=args.version,
    )
    synth = (
        SynthSource(
            tuple(args.data_synth), max_studies=args.max_synth_studies, slices_per_study=args.synth_slices
        )
        if args.data_synth
        else None
    )
    spec = train_sagittal(
        out_dir=args.out,
        work_dir=args.work_dir or Path("var/train") / args.out.name,
        spider_root=args.data_spider,
        synth_samples=synth.load if synth else None,
        synth_description=synth.describe() if synth else None,
        config=config,
        init=args.init,
    )
    print(f"wrote {args.out}/model.safetensors ({spec.tag}, sha256 {spec.sha256[:12]})")
    for name, value in spec.metrics.items():
        summary = value.get("summary", value) if isinstance(value, dict) else value
        print(f"{name}: {summary}")
    return 0
