"""Links and FHIR report for cards: signed viewer URLs and the cached preliminary report.

The DiagnosticReport of a complete analysis never changes (a re-analysis is a new analysis id),
so its validated JSON is cached per worker: building and validating 25 Observations with
fhir.resources costs milliseconds that the hook's hot path does not need to pay twice. It is
cached as JSON text only (ReportJson): the dict it was built as is four times that in memory
(~330 kB against ~80 kB per report, measured), and the hot path only ever splices the text into
the answer (cds.hooks.encode).

Signed links are memoised for the current second only: an itsdangerous token carries its signing
time in whole seconds and is a pure function of (secret, purpose, payload, second), so a link
reused within the second it was signed is byte-for-byte the link a fresh signature would give.

A finished explanation adds to the report its rationale (presentedForm, titled with the writer) and
one Media per Grad-CAM overlay. The images go BY URL to the viewer's signed heatmap endpoint
(/viewer/<token>/heatmap/<index>.png), not inline: an overlay PNG is about 190 kB, a study can have
up to 25, and the report travels in every patient-view answer (inline data would make a card of
several MB). The URL carries the same signed, expiring viewer token as the card's viewer link, so an
EHR filing the suggested report should fetch the images when it files it; the durable copy with the
images inline is the FHIR write-back (cds.fhir.writeback). Because those URLs expire, a report with
images is cached only for a quarter of the link lifetime (REFRESH_PARTS) and then signed afresh:
every served URL has at least three quarters of its lifetime left.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from cds.errors import BadRequest
from cds.fhir.report import ReportContext, ReportImage, build_diagnostic_report
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.explanations import StoredExplanation
from cds.hooks.studies import LumbarStudy

log = logging.getLogger(__name__)

_CACHE_SIZE = 512
#: ... and at most this much JSON text per worker (~100 recently served studies, each rebuilt in a
#: few ms when asked for again after eviction).
CACHE_TEXT_BYTES = 8 * 1024 * 1024


class ReportJson(Mapping[str, Any]):
    """A built DiagnosticReport kept as its compact JSON text (UTF-8) only.

    Hook answers splice `text` as it is (LinkPresenter.fragment, cds.hooks.encode). Read as a
    mapping (tests, a rare reader) it parses the text on every access: nothing parsed is kept.
    Not a dict on purpose: a serialiser that does not know it fails loudly instead of writing {}.
    """

    __slots__ = ("_keys", "text")

    def __init__(self, text: bytes, keys: tuple[str, ...]) -> None:
        self.text = text
        self._keys = keys

    def _parsed(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.text)
        return parsed

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReportJson):
            return self.text == other.text
        if isinstance(other, Mapping):  # a length check first: prune_empty compares with {}
            return len(other) == len(self) and self._parsed() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ReportJson({len(self.text)} bytes)"


#: A report with signed image URLs is rebuilt after ttl / REFRESH_PARTS seconds.
REFRESH_PARTS = 4


class LinkPresenter:
    def __init__(
        self,
        public_base_url: str,
        sign_viewer: Callable[[str, int], str],
        sign_explain: Callable[[str, int], str],
        ttl_s: int,
    ) -> None:
        self._base = public_base_url.rstrip("/")
        self._sign_viewer = sign_viewer
        self._sign_explain = sign_explain
        self._ttl_s = ttl_s
        self._reports: OrderedDict[tuple[Any, ...], ReportJson] = OrderedDict()
        self._text_bytes = 0  # sum of len(report.text) over _reports
        #: The cached key of each report's newest variant, by (analysis, patient, study, resource).
        self._variants: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._lock = threading.Lock()
        #: Links signed during second `_links_second`, by (purpose, analysis id).
        self._links_second = -1
        self._links: dict[tuple[str, str], str] = {}

    def _link(self, purpose: str, sign: Callable[[str, int], str], analysis_id: str) -> str:
        second = int(time.time())
        key = (purpose, analysis_id)
        with self._lock:
            if second == self._links_second:
                found = self._links.get(key)
                if found is not None:
                    return found
        url = f"{self._base}/{purpose}/{sign(analysis_id, self._ttl_s)}"
        with self._lock:
            if second != self._links_second:
                self._links_second, self._links = second, {}
            self._links[key] = url
        return url

    def viewer_url(self, analysis_id: str) -> str:
        return self._link("viewer", self._sign_viewer, analysis_id)

    def heatmap_url(self, analysis_id: str, index: int) -> str:
        """The viewer's signed URL of one heatmap overlay PNG (index: cds.hooks.explanations)."""
        return f"{self.viewer_url(analysis_id)}/heatmap/{int(index)}.png"

    def explain_url(self, analysis_id: str) -> str:
        """On-demand explainable mode: opening it requests Grad-CAM and rationale for the analysis.

        Signed with the EXPLAIN purpose, so a viewer link cannot be turned into an explain request.
        """
        return self._link("explain", self._sign_explain, analysis_id)

    def report(self, stored: StoredAnalysis, study: LumbarStudy, patient_id: str) -> ReportJson:
        if stored.result is None:
            raise ValueError("a report needs a complete analysis")
        explanation = stored.explanation if stored.explanation and stored.explanation.ready else None
        # Images carry expiring signed URLs: such a report is rebuilt once per refresh period.
        epoch = (
            int(time.time()) // max(1, self._ttl_s // REFRESH_PARTS)
            if explanation and explanation.heatmaps
            else 0
        )
        key = (
            stored.analysis_id,
            patient_id,
            study.study_uid,
            study.resource_id or "",
            explanation.version if explanation else None,
            epoch,
        )
        with self._lock:
            cached = self._reports.get(key)
            if cached is not None:
                self._reports.move_to_end(key)
                return cached
        built = self._build(stored, study, patient_id, explanation)
        report = ReportJson(json.dumps(built, separators=(",", ":")).encode(), tuple(built))
        del built  # the dict is four times the text: only the text is kept
        with self._lock:
            found = self._reports.get(key)
            if found is not None:
                # Another thread built the same report meanwhile (the first calls for a new study
                # come together): serve that one. (Storing ours over it used to leave the replaced
                # report's text behind for good: a leak of ~85 kB per such race.)
                self._reports.move_to_end(key)
                return found
            # A newer variant (explanation version, link refresh epoch) of the same report makes
            # the older one dead weight: it is never asked for again. Drop it now, not at LRU time.
            variant = key[:4]
            older = self._variants.get(variant)
            if older is not None and older in self._reports:
                self._text_bytes -= len(self._reports.pop(older).text)
            self._variants[variant] = key
            self._reports[key] = report
            self._text_bytes += len(report.text)
            while len(self._reports) > _CACHE_SIZE or self._text_bytes > CACHE_TEXT_BYTES:
                evicted_key, evicted = self._reports.popitem(last=False)
                self._text_bytes -= len(evicted.text)
                if self._variants.get(evicted_key[:4]) == evicted_key:
                    del self._variants[evicted_key[:4]]
        return report

    def _build(
        self,
        stored: StoredAnalysis,
        study: LumbarStudy,
        patient_id: str,
        explanation: StoredExplanation | None,
    ) -> dict[str, Any]:
        assert stored.result is not None
        base: dict[str, Any] = {
            "analysis_id": stored.analysis_id,
            "patient_ref": f"Patient/{patient_id}",
            "issued": stored.updated_at or datetime.now(UTC),
            "study_uid": study.study_uid,
            "imaging_study_ref": f"ImagingStudy/{study.resource_id}" if study.resource_id else None,
            "study_date": study.started,
        }
        if explanation is not None:
            try:
                ctx = ReportContext(**base, **self._explanation_parts(stored.analysis_id, explanation))
                return build_diagnostic_report(stored.result, ctx)
            except BadRequest as exc:
                # The findings still go out; what the explanation added did not validate.
                log.warning(
                    "explanation left out of the report of analysis %s: %s",
                    stored.analysis_id,
                    type(exc).__name__,
                )
        return build_diagnostic_report(stored.result, ReportContext(**base))

    def _explanation_parts(self, analysis_id: str, explanation: StoredExplanation | None) -> dict[str, Any]:
        """ReportContext members for a finished explanation: rationale, its writer, the images."""
        if explanation is None:
            return {}
        images = tuple(
            ReportImage(
                key=f"{h.level.value}-{h.condition.value}".replace("_", "-"),
                title=f"Grad-CAM heatmap {h.level.value} {h.condition.display} (AI, preliminary)",
                url=self.heatmap_url(analysis_id, h.index),
                level=h.level,
                condition=h.condition,
            )
            for h in explanation.heatmaps
        )
        return {"rationale": explanation.rationale, "rationale_writer": explanation.writer, "images": images}

    def fragment(self, resource: Mapping[str, Any]) -> bytes | None:
        """The JSON text of a report this presenter returned (None for any other mapping)."""
        return resource.text if isinstance(resource, ReportJson) else None
