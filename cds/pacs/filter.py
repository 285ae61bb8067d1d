"""Is a stable study a lumbar spine MRI? Decided from DICOM headers before any pixel is fetched.

A PACS holds every kind of study; analysing a chest CT would waste a worker and store a useless
"unanalysable". The rule mirrors how the hooks recognise ImagingStudy resources
(cds.hooks.studies): MR by modality, lumbar by procedure code, Body Part Examined, or description,
because sites fill in different subsets of these.
"""

from __future__ import annotations

import re
from enum import StrEnum

from cds.hooks.codes import CPT, LOINC, LUMBAR_BODY_PART_EXAMINED, LUMBAR_MRI_PROCEDURES, SNOMED
from cds.pacs.study import StableStudy

#: DICOM coding scheme designators (PS3.16 Table 8-1) of the systems in LUMBAR_MRI_PROCEDURES.
SCHEME_SYSTEMS = {"LN": LOINC, "SCT": SNOMED, "SRT": SNOMED, "C4": CPT, "CPT4": CPT}
_LUMBAR_TEXT = re.compile(r"\b(lumbar|lumbosacral|l[\s-]?spine|ls[\s-]?spine|lws)\b", re.IGNORECASE)


class Verdict(StrEnum):
    LUMBAR_MRI = "lumbar_mri"
    NOT_MR = "not_mr"
    NOT_LUMBAR = "not_lumbar"


def classify(study: StableStudy) -> Verdict:
    if "MR" not in study.all_modalities:
        return Verdict.NOT_MR
    if any(
        (SCHEME_SYSTEMS.get(c.scheme.strip().upper(), ""), c.code.strip()) in LUMBAR_MRI_PROCEDURES
        for c in study.procedure_codes
    ):
        return Verdict.LUMBAR_MRI
    mr_series = [s for s in study.series if s.modality.strip().upper() == "MR"] or list(study.series)
    if any(s.body_part.strip().upper() in LUMBAR_BODY_PART_EXAMINED for s in mr_series):
        return Verdict.LUMBAR_MRI
    texts = [study.description, *(s.description for s in mr_series)]
    if any(_LUMBAR_TEXT.search(t) for t in texts if t):
        return Verdict.LUMBAR_MRI
    return Verdict.NOT_LUMBAR
