"""Side-by-side grid of real (SPIDER) and synthetic mid-sagittal T2 slices, for the realism check.

Usage: python bench/synth_realism_grid.py [--n 4] [--seed 0] [--out out/realism_grid.png]
Top row: SPIDER slices (head up, anterior left, as stored); bottom rows: synthetic sagittal T2 slices
(mid-sagittal and one parasagittal), resampled to SPIDER's 0.47 mm display scale and windowed with the
DICOM window tags, each with its label overlay beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

SPIDER = Path("/work/shared/data/spider-t2-sagittal")
TILE = (320, 400)  # width, height of each tile


def _spider_tiles(n: int) -> list[np.ndarray]:
    out = []
    for d in sorted(p for p in SPIDER.iterdir() if p.is_dir())[:n]:
        files = sorted(d.glob("*_image.png"))
        im = Image.open(files[len(files) // 2]).convert("L").resize(TILE)
        out.append(np.asarray(im))
    return out


def _synthetic_tiles(root: Path) -> list[np.ndarray]:
    table = json.loads((root / "truth" / "labels.json").read_text())
    sag = next(u for u, s in table["series"].items() if s["kind"] == "sagittal_t2")
    dss = [pydicom.dcmread(p) for p in sorted((root / "dicom").glob("*.dcm"))]
    dss = sorted((d for d in dss if d.SeriesInstanceUID == sag), key=lambda d: int(d.InstanceNumber))
    labels = np.load(root / "truth" / table["series"][sag]["file"])["labels"]
    tiles = []
    for k in (len(dss) // 2, len(dss) // 2 + 3):
        ds = dss[k]
        img = ds.pixel_array.astype(np.float32)
        wc, ww = float(ds.WindowCenter), float(ds.WindowWidth)
        img = np.clip((img - (wc - ww / 2)) / ww, 0, 1) * 255
        ps = float(ds.PixelSpacing[0])
        # crop a SPIDER-like field (240 x 300 mm) around the image centre, then scale to the tile
        h, w = img.shape
        ch, cw = min(h, int(300 / ps)), min(w, int(240 / ps))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crop = img[y0 : y0 + ch, x0 : x0 + cw].astype(np.uint8)
        lab = labels[k, y0 : y0 + ch, x0 : x0 + cw]
        tiles.append(np.asarray(Image.fromarray(crop).resize(TILE)))
        from cds.synth.labels import GT_GROUPS

        m = np.zeros(lab.shape, np.uint8)
        for val, grp in ((29, "disc"), (76, "vertebra"), (150, "canal")):
            m[np.isin(lab, GT_GROUPS[grp])] = val
        tiles.append(np.asarray(Image.fromarray(m).resize(TILE, Image.NEAREST)))
    return tiles


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("out/realism_grid.png"))
    args = ap.parse_args()
    from cds.synth.study import generate_study

    real = _spider_tiles(args.n)
    rows = [np.concatenate(real, axis=1)]
    with tempfile.TemporaryDirectory() as tmp:
        syn: list[np.ndarray] = []
        for i in range(args.n):
            syn += _synthetic_tiles(generate_study(args.seed + i, Path(tmp)))
    # synthetic: per study (mid image, mid labels, para image, para labels) -> two rows of n tiles
    rows.append(np.concatenate([syn[4 * i] for i in range(args.n)], axis=1))
    rows.append(np.concatenate([syn[4 * i + 1] for i in range(args.n)], axis=1))
    rows.append(np.concatenate([syn[4 * i + 2] for i in range(args.n)], axis=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
