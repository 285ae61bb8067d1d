"""The foraminal pointing bench's scoring: the 3 mm rule on a synthetic sagittal cause mask and
the mapping of pipeline-named foramen crops to true levels."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np

from cds.dicom.selection import SeriesKind
from cds.dicom.volume import Volume
from cds.domain import Level, Side

BENCH = Path(__file__).resolve().parents[2] / "bench" / "foraminal_pointing.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("foraminal_pointing", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["foraminal_pointing"] = module
    spec.loader.exec_module(module)
    return module


def _sagittal() -> Volume:
    # slices 3 mm apart along x, 1 mm pixels: (k, i, j) -> (3k, j, -i)
    a = np.array([[3.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])
    return Volume(
        np.zeros((5, 20, 20), np.float32), a, (3.0, 1.0, 1.0), "1.2.3", "SAG T2", SeriesKind.SAGITTAL_T2
    )


def test_peak_within_3_mm_of_the_cause_region_hits_and_beyond_misses() -> None:
    fp = _bench()
    volume = _sagittal()
    mask = np.zeros(volume.shape, bool)
    mask[2, 10, 10] = True  # voxel box: x 4.5..7.5, y 9.5..10.5, z -10.5..-9.5
    inside = volume.voxel_to_patient(np.array([2.0, 10.0, 10.0]))
    near = inside + np.array([0.0, 3.5, 0.0])  # 3.0 mm beyond the box edge
    far = inside + np.array([0.0, 0.0, 4.0])  # 3.5 mm beyond the box edge
    from cds.explain.faithfulness import distance_to_region_mm

    d_in, d_near, d_far = (distance_to_region_mm(p, mask, volume) for p in (inside, near, far))
    assert d_in == 0.0 and abs(d_near - 3.0) < 1e-9 and abs(d_far - 3.5) < 1e-9
    assert fp.is_hit(d_in) and fp.is_hit(d_near) and not fp.is_hit(d_far)
    assert not fp.is_hit(None)  # an empty map never hits
    # a miss split into its causes: two sagittal slices off (lateral) vs off on the right slice
    lateral = inside + np.array([6.0, 0.0, 0.0])
    assert fp.gap_components(lateral, mask, volume) == (4.5, 0.0)
    assert fp.gap_components(far, mask, volume) == (0.0, 3.5)


def test_named_crops_map_to_the_nearest_true_disc_and_a_correct_name_wins() -> None:
    fp = _bench()

    def inp(origin: list[float]) -> SimpleNamespace:
        return SimpleNamespace(frame=SimpleNamespace(origin=np.array(origin)))

    centroids = {Level.L4_L5: np.array([0.0, 0.0, 0.0]), Level.L5_S1: np.array([0.0, 0.0, -35.0])}
    foramina = {
        (Level.L3_L4, Side.LEFT): inp([0.0, 1.0, 2.0]),  # misnamed: sits on the true L4-L5 disc
        (Level.L4_L5, Side.LEFT): inp([0.0, 0.0, 1.0]),  # correctly named, same disc
        (Level.L5_S1, Side.LEFT): inp([0.0, 0.0, -60.0]),  # 25 mm from any disc: no true level
    }
    assert fp.true_levels(foramina, centroids) == {Level.L4_L5: Level.L4_L5}
