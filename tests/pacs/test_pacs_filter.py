"""Which stable studies are lumbar spine MRIs (decided from headers before any pixel is fetched)."""

from __future__ import annotations

from datetime import date

import pytest

from cds.pacs.filter import Verdict, classify
from cds.pacs.study import InvalidStudyInfo, ProcedureCode, SeriesInfo, StableStudy, dicom_date

UID = "1.2.826.0.1.3680043.8.498.77"


def study(*series: SeriesInfo, description: str = "", codes: tuple[ProcedureCode, ...] = ()) -> StableStudy:
    return StableStudy(UID, description=description, series=series, procedure_codes=codes)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (study(SeriesInfo("MR", "Sag T2", "LSPINE")), Verdict.LUMBAR_MRI),
        (study(SeriesInfo("MR", "Sag T2", "lsspine ")), Verdict.LUMBAR_MRI),
        (study(SeriesInfo("MR", "t2_tse_sag", "")), Verdict.NOT_LUMBAR),
        (study(SeriesInfo("MR", "", ""), description="MRI L-SPINE W/O"), Verdict.LUMBAR_MRI),
        (study(SeriesInfo("MR", "Sag T2 lumbar", "")), Verdict.LUMBAR_MRI),
        (study(SeriesInfo("MR", "", ""), codes=(ProcedureCode("LN", "24968-0"),)), Verdict.LUMBAR_MRI),
        (study(SeriesInfo("MR", "", ""), codes=(ProcedureCode("C4", "72148"),)), Verdict.LUMBAR_MRI),
        (study(SeriesInfo("MR", "", ""), codes=(ProcedureCode("LN", "24590-2"),)), Verdict.NOT_LUMBAR),
        (study(SeriesInfo("MR", "Ax T2", "HEAD"), description="MRI BRAIN"), Verdict.NOT_LUMBAR),
        (study(SeriesInfo("CT", "Sag bone", "LSPINE"), description="CT LUMBAR SPINE"), Verdict.NOT_MR),
        (study(), Verdict.NOT_MR),
        # Body part of a non-MR series (a CT scout in an MR study) does not make the study lumbar.
        (study(SeriesInfo("MR", "Ax T2", "CSPINE"), SeriesInfo("CT", "scout", "LSPINE")), Verdict.NOT_LUMBAR),
    ],
)
def test_classify(case: StableStudy, expected: Verdict) -> None:
    assert classify(case) is expected


def test_modalities_in_study_count_as_mr() -> None:
    assert classify(StableStudy(UID, description="Lumbar spine", modalities=("MR",))) is Verdict.LUMBAR_MRI


@pytest.mark.parametrize(
    "bad", ["", "1.2.", "1.02.3", "abc", "1." + "2" * 70, "1.2.3; DROP", "1.2.3\n", "\n1.2.3"]
)
def test_study_uid_must_be_a_dicom_uid(bad: str) -> None:
    with pytest.raises(InvalidStudyInfo):
        StableStudy(bad)


def test_overlong_descriptions_are_truncated_not_refused() -> None:
    study = StableStudy(
        UID, description="Lumbar spine " + "x" * 300, series=(SeriesInfo("MR", "Sag T2 " + "y" * 300),)
    )
    assert len(study.description) == 256 and study.description.startswith("Lumbar spine")
    assert len(study.series[0].description) == 256
    assert classify(study) is Verdict.LUMBAR_MRI


def test_overlong_identifiers_and_too_many_series_are_refused() -> None:
    with pytest.raises(InvalidStudyInfo):
        StableStudy(UID, patient_id="p" * 300)
    with pytest.raises(InvalidStudyInfo):
        StableStudy(UID, series=tuple(SeriesInfo("MR") for _ in range(501)))


def test_dicom_dates() -> None:
    assert dicom_date("20260701") == date(2026, 7, 1)
    assert dicom_date("") is None and dicom_date(None) is None
    for odd in ("2026-07-01", "20261301", "2026070", "2026.07.01", "20260700"):
        assert dicom_date(odd) is None  # date unknown; the study itself is still taken in
