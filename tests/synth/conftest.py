"""One small synthetic study per test session (small matrices keep generation to a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds.synth.study import StudyOptions, generate_study

SMALL = StudyOptions(sag_matrix=(128,), ax_matrix=(96,), min_sag_slices=9)


@pytest.fixture(scope="session")
def small_options() -> StudyOptions:
    return SMALL


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_study(5, tmp_path_factory.mktemp("synth"), SMALL)
