"""``cds train axial-seg`` and ``cds train classifier``: the stage-1 axial U-Net and the stage-2
level classifier, trained on a folder written by ``cds synth`` (its split.json decides train and
validation studies). Arguments live here (torch-free) so that ``cds --help`` stays fast; the
training code is imported by the handlers only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any


def register_models(models: Any) -> None:
    """Add the two pipeline models to the ``cds train`` sub-parsers."""
    axial = models.add_parser(
        "axial-seg", help="axial T2 segmentation (dural sac, disc, facets, ...) on synth data"
    )
    add_axial_arguments(axial)
    axial.set_defaults(handler=run_axial)
    clf = models.add_parser(
        "classifier", help="stage-2 level classifier (calibrated), needs a trained axial-seg"
    )
    add_classifier_arguments(clf)
    clf.set_defaults(handler=run_classifier)


def _common(p: argparse.ArgumentParser, name: str, epochs: int, batch: int) -> None:
    p.add_argument("--data", type=Path, required=True, help="folder written by `cds synth` (with split.json)")
    p.add_argument("--out", type=Path, default=Path("models") / name, help="model folder to write")
    p.add_argument("--work-dir", type=Path, default=Path("var/train") / name, help="checkpoints, logs, cache")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--max-train", type=int, default=0, help="use only the first N training studies (0 = all)")
    p.add_argument("--version", default="1.0.0")


def add_axial_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, "axial_seg", epochs=12, batch=8)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--init", type=Path, help="fine-tune from this model folder (card + weights, verified)")
    p.add_argument(
        "--sac-boundary-weight",
        type=float,
        default=0.0,
        help="extra cross-entropy weight on the dural sac's boundary band (sharper DSCA)",
    )


def add_classifier_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, "classifier", epochs=25, batch=32)
    p.add_argument(
        "--seg-model", type=Path, default=Path("models/axial_seg"), help="trained axial-seg folder"
    )
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="crop/target cache root, kept between runs (default: WORK_DIR/cache); keyed by axial_seg sha256",
    )
    p.add_argument("--cached-only", action="store_true", help="use only studies already in the cache")
    p.add_argument("--max-validation", type=int, default=0, help="use only the first N validation studies")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoint.pt")
    p.add_argument("--localisation-weight", type=float, default=0.5, help="cause-region loss weight")
    p.add_argument("--measure-weight", type=float, default=0.5, help="measurement regression loss weight")


def _report(spec: Any) -> int:
    print(json.dumps({"model": spec.tag, "sha256": spec.sha256, "metrics": dict(spec.metrics)}, indent=1))
    return 0


def run_axial(args: argparse.Namespace) -> int:
    from cds.train.axial_seg import AxialTrainConfig, train_axial

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = AxialTrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        base_channels=args.base_channels,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        version=args.version,
        sac_boundary_weight=args.sac_boundary_weight,
    )
    return _report(
        train_axial(
            data_root=args.data,
            out_dir=args.out,
            work_dir=args.work_dir,
            config=config,
            max_train=args.max_train,
            init=args.init,
        )
    )


def run_classifier(args: argparse.Namespace) -> int:
    from cds.train.classifier import ClassifierTrainConfig, train_classifier

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = ClassifierTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        version=args.version,
        localisation_weight=args.localisation_weight,
        measure_weight=args.measure_weight,
    )
    return _report(
        train_classifier(
            data_root=args.data,
            seg_model_dir=args.seg_model,
            out_dir=args.out,
            work_dir=args.work_dir,
            config=config,
            cache_root=args.cache_dir,
            max_train=args.max_train,
            max_validation=args.max_validation,
            cached_only=args.cached_only,
            resume=args.resume,
        )
    )
