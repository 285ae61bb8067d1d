"""Links and FHIR report for cards: signed viewer URLs and the cached preliminary report.

The DiagnosticReport of a complete analysis never changes (a re-analysis is a new analysis id),
so its validated JSON is cached per worker: building and validating 25 Observations with
fhir.resources costs milliseconds that the hook's hot path does not need to pay twice.

Signed links are memoised for the current second only: an itsdangerous token carries its signing
time in whole seconds and is a pure function of (secret, purpose, payload, second), so a link
reused within the second it was signed is byte-for-byte the link a fresh signature would give.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cds.fhir.report import ReportContext, build_diagnostic_report
from cds.hooks.catalog import StoredAnalysis
from cds.hooks.studies import LumbarStudy

_CACHE_SIZE = 512


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
        self._reports: OrderedDict[tuple[str, ...], dict[str, Any]] = OrderedDict()
        #: JSON text (UTF-8) of each cached report, by the identity of the cached dict (see encode.py).
        self._texts: dict[int, bytes] = {}
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

    def explain_url(self, analysis_id: str) -> str:
        """On-demand explainable mode: opening it requests Grad-CAM and rationale for the analysis.

        Signed with the EXPLAIN purpose, so a viewer link cannot be turned into an explain request.
        """
        return self._link("explain", self._sign_explain, analysis_id)

    def report(self, stored: StoredAnalysis, study: LumbarStudy, patient_id: str) -> dict[str, Any]:
        if stored.result is None:
            raise ValueError("a report needs a complete analysis")
        key = (stored.analysis_id, patient_id, study.study_uid, study.resource_id or "")
        with self._lock:
            cached = self._reports.get(key)
            if cached is not None:
                self._reports.move_to_end(key)
                return cached
        ctx = ReportContext(
            analysis_id=stored.analysis_id,
            patient_ref=f"Patient/{patient_id}",
            issued=stored.updated_at or datetime.now(UTC),
            study_uid=study.study_uid,
            imaging_study_ref=f"ImagingStudy/{study.resource_id}" if study.resource_id else None,
            study_date=study.started,
        )
        report = build_diagnostic_report(stored.result, ctx)
        text = json.dumps(report, separators=(",", ":")).encode()
        with self._lock:
            self._reports[key] = report
            self._texts[id(report)] = text
            while len(self._reports) > _CACHE_SIZE:
                _, evicted = self._reports.popitem(last=False)
                self._texts.pop(id(evicted), None)
        return report

    def fragment(self, resource: Mapping[str, Any]) -> bytes | None:
        """The cached JSON text of a report this presenter returned (None for any other dict)."""
        with self._lock:
            return self._texts.get(id(resource))
