"""Is this a lumbar spine study? Reject only on clear evidence to the contrary.

Real lumbar studies often have an empty or vendor-specific BodyPartExamined ("", "SPINE",
"LSPINE", "L-SPINE", "LWS", "RACHIS"), so absence of evidence is never a reason to reject.
A study is rejected only when its body part or descriptions name some other region (head, knee,
cervical spine, ...) and nothing in it mentions the lumbar/whole spine. Geometry cannot settle the
question on its own (brain and cervical protocols also have sagittal and axial stacks), so it is
left to the series selection (a sagittal T2 is still required).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.headers import InstanceHeader

# Words that put the lumbar spine (or a whole/total spine covering it) in the study. A bare "SPINE"
# (or WIRBELSAEULE, RACHIS, ...) is neutral: it neither confirms nor rules out the lumbar spine.
_LUMBAR = re.compile(
    r"LUMB|LOMB|\bL[ -]?SPINE|LSPINE|\bLS[ -]?SPINE|\bLWS\b|LENDEN|SACR|\bL[1-5]\b|\bLSP\b|"
    r"WHOLE[ -]?SPINE|TOTAL[ -]?SPINE|\bW[ -]?SPINE|WSPINE|\bTL[ -]?SPINE|TLSPINE|GANZE WIRBEL"
)
# Words naming a region that is not the lumbar spine.
_OTHER = re.compile(
    r"BRAIN|HEAD|\bKOPF|SCHAEDEL|SCHADEL|SKULL|CRAN|CEREB|PITUIT|ORBIT|\bIAC\b|SINUS|NECK|HALS|"
    r"\bC[ -]?SPINE|CSPINE|CERVICAL|\bHWS\b|\bT[ -]?SPINE|TSPINE|THORACIC SPINE|\bBWS\b|"
    r"KNEE|KNIE|SHOULDER|SCHULTER|ELBOW|WRIST|HAND|ANKLE|FOOT|FUSS|HIP\b|HUEFTE|"
    r"CARD|HEART|HERZ|BREAST|MAMMA|CHEST|THORAX|LUNG|LIVER|LEBER|ABDOMEN|PROSTAT|PELVIS|BECKEN|UTERUS|"
    r"RECTUM|KIDNEY|NIERE|PANCREA|ANGIO"
)


def check_lumbar_spine(headers: Iterable[InstanceHeader]) -> None:
    """Raise not_lumbar_spine when the study clearly images something else."""
    words: set[str] = set()
    for h in headers:
        for text in (h.body_part, h.study_description, h.series_description, h.protocol_name):
            if text:
                words.add(text.upper().replace("_", " "))
    lumbar = any(_LUMBAR.search(w) for w in words)
    other = sorted({m.group(0) for w in words if (m := _OTHER.search(w))})
    if other and not lumbar:
        raise ingest_error(
            IngestKind.NOT_LUMBAR_SPINE,
            f"study does not look like a lumbar spine MRI (mentions {', '.join(other[:3])}, "
            "never the lumbar spine)",
        )
