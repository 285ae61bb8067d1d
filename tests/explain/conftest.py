"""Shared finding sets for the rationale tests (the analyze JSON `levels` object)."""

from __future__ import annotations

from typing import Any

import pytest

from cds.explain.findings import RationaleInput, coerce_input


def _f(grade: str, uncertain: bool = False, **measurements: float) -> dict[str, Any]:
    return {"grade": grade, "probability": 0.9, "measurements": measurements, "uncertain": uncertain}


def sample_levels() -> dict[str, Any]:
    """L4-L5 severe canal + asymmetric foramina; L3-L4 uncertain moderate canal; L5-S1 normal."""
    return {
        "L3-L4": {
            "spinal_canal": _f("moderate", True, dsca_mm2=88.2, ap_diameter_mm=9.4, disc_height_mm=8.8),
            "left_foraminal": _f("normal_mild", foraminal_area_ratio=0.71),
            "right_foraminal": _f("normal_mild", foraminal_area_ratio=0.74),
        },
        "L4-L5": {
            "spinal_canal": _f("severe", dsca_mm2=61.8, ap_diameter_mm=7.9, disc_height_mm=9.1),
            "left_foraminal": _f("moderate", foraminal_area_ratio=0.45),
            "right_foraminal": _f("severe", foraminal_area_ratio=0.31),
            "left_subarticular": _f("normal_mild", lateral_recess_depth_mm=5.6),
            "right_subarticular": _f("normal_mild", lateral_recess_depth_mm=5.9),
        },
        "L5-S1": {
            "spinal_canal": _f("normal_mild", dsca_mm2=131.0),
            "left_foraminal": _f("normal_mild", True, foraminal_area_ratio=0.62),
            "right_foraminal": _f("normal_mild", foraminal_area_ratio=0.8),
        },
    }


@pytest.fixture()
def sample() -> RationaleInput:
    return coerce_input(sample_levels())


@pytest.fixture()
def sample_with_heatmap() -> RationaleInput:
    return coerce_input(sample_levels(), {"L4-L5": {"spinal_canal": "posterior disc margin"}})


@pytest.fixture()
def levels_json() -> dict[str, Any]:
    return sample_levels()
