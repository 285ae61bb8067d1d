"""``cds train sagittal-seg``: train the sagittal segmentation U-Net and write weights + model card.

Heavy imports (torch, the training code) happen inside the handler so that ``cds --help`` and the
other subcommands stay fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cds.commands import train_foraminal, train_pipeline, train_sac_fine, train_subarticular


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
    seg.add_argument(
        "--synth-split",
        metavar="PART",
        help="train only on this part of each --data-synth folder's split.json (e.g. train)",
    )
    seg.add_argument(
        "--validation-split",
        metavar="PART",
        help="score every epoch on this part of the first --data-synth folder's split.json "
        "(e.g. validation) as the evaluation scores it, and ship the best epoch",
    )
    seg.add_argument(
        "--centre-half-width",
        type=int,
        default=-1,
        help="also train on the stack-centre slices quick_read segments (half width; -1: off)",
    )
    seg.add_argument(
        "--monitor-patients", type=int, default=6, help="SPIDER hold-out patients scored per epoch"
    )
    seg.add_argument("--spider-floor", type=float, default=0.85, help="never select an epoch below this")
    seg.add_argument("--warmup-fraction", type=float, default=0.1, help="OneCycle warm-up share of steps")
    seg.add_argument(
        "--canal-weight", type=float, default=1.0, help="weight of the canal class in the loss (1: plain)"
    )
    seg.add_argument(
        "--resume", action="store_true", help="continue the checkpoint in --work-dir (error when none)"
    )
    seg.add_argument(
        "--export",
        type=Path,
        metavar="CHECKPOINT",
        help="train nothing: write this checkpoint (e.g. <work-dir>/best.pt of a cut-short run) as --out "
        "and evaluate it; the data flags describe the data it was trained on",
    )
    seg.set_defaults(handler=_run_sagittal)
    train_pipeline.register_models(models)  # axial-seg, classifier (owner: pipeline)
    train_foraminal.register_model(models)  # foraminal (owner: H2, session 10)
    train_subarticular.register_model(models)  # subarticular (owner: S11-E, session 11)
    train_sac_fine.register_model(models)  # sac-fine (owner: S11-C, session 11)


def _run_sagittal(args: argparse.Namespace) -> int:
    from cds.train.sagittal import TrainConfig, train_sagittal
    from cds.train.sagittal_validation import load_validation, split_names
    from cds.train.synth_data import SynthSource

    if args.data_spider is None and args.data_synth is None:
        raise SystemExit("give --data-spider and/or --data-synth")
    if (args.synth_split or args.validation_split) and not args.data_synth:
        raise SystemExit("--synth-split / --validation-split need --data-synth")
    if args.validation_split and not args.synth_split:
        raise SystemExit("--validation-split needs --synth-split (else validation studies are trained on)")
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
        monitor_patients=args.monitor_patients,
        spider_floor=args.spider_floor,
        warmup_fraction=args.warmup_fraction,
        canal_weight=args.canal_weight,
    )
    include: tuple[str, ...] = ()
    if args.synth_split:
        include = tuple(n for root in args.data_synth for n in split_names(root, args.synth_split))
    if args.export is not None:
        return _export(args, include)
    validation = []
    validation_info = None
    if args.validation_split:
        root = args.data_synth[0]
        names = split_names(root, args.validation_split)
        if set(names) & set(include):
            raise SystemExit("validation studies overlap the training studies")
        validation = load_validation(root, names)
        validation_info = {
            "folder": str(root),
            "split_part": args.validation_split,
            "studies": len(validation),
        }
    synth = (
        SynthSource(
            tuple(args.data_synth),
            max_studies=args.max_synth_studies,
            slices_per_study=args.synth_slices,
            include=include,
            centre_half_width=args.centre_half_width,
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
        validation=validation,
        validation_description=validation_info,
        resume=args.resume,
    )
    _print_spec(args.out, spec)
    return 0


def _export(args: argparse.Namespace, include: tuple[str, ...]) -> int:
    from cds.train.sagittal import export_checkpoint
    from cds.train.sagittal_validation import split_names
    from cds.train.synth_data import SynthSource

    synth = (
        SynthSource(
            tuple(args.data_synth),
            max_studies=args.max_synth_studies,
            slices_per_study=args.synth_slices,
            include=include,
            centre_half_width=args.centre_half_width,
        )
        if args.data_synth
        else None
    )
    validation_info = None
    if args.validation_split:
        root = args.data_synth[0]
        names = split_names(root, args.validation_split)
        validation_info = {"folder": str(root), "split_part": args.validation_split, "studies": len(names)}
    spec = export_checkpoint(
        args.export,
        args.out,
        args.data_spider,
        args.version,
        synth_description=synth.describe() if synth else None,
        validation_description=validation_info,
        init=args.init,
    )
    _print_spec(args.out, spec)
    return 0


def _print_spec(out: Path, spec: Any) -> None:
    print(f"wrote {out}/model.safetensors ({spec.tag}, sha256 {spec.sha256[:12]})")
    for name, value in spec.metrics.items():
        summary = value.get("summary", value) if isinstance(value, dict) else value
        print(f"{name}: {summary}")
