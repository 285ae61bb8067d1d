"""A study on a DICOMweb server (any PACS; Orthanc in tests): QIDO-RS to list, WADO-RS to read.

Headers come from WADO-RS series metadata (JSON, no pixel data), so choosing series costs a few
kilobytes per instance; only the chosen series are retrieved in full. Instances are requested as
Explicit VR Little Endian (an explicit media type with transfer-syntax parameter): the server
transcodes, and this service never meets a compressed syntax it has no decoder for. Without the
explicit media type several servers answer with the stored (often JPEG) syntax or refuse (406).

Transient failures (connection errors, 429/500/502/503/504) are retried with exponential backoff
by urllib3, every request has a connect/read timeout, and what still fails becomes UpstreamError.
Credentials live only in the requests session; they never appear in repr(), logs or errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.limits import DEFAULT_LIMITS, IngestLimits
from cds.dicom.sources.base import InstanceRef
from cds.errors import UpstreamError

RETRY_STATUS = (429, 500, 502, 503, 504)
#: WADO-RS media type asking the server to transcode to uncompressed little endian.
UNCOMPRESSED_MEDIA_TYPES: tuple[tuple[str, str], ...] = (("application/dicom", str(ExplicitVRLittleEndian)),)
_SERIES_UID_TAG = "0020000E"


@dataclass(frozen=True)
class DicomWebAuth:
    """HTTP basic (username + password) or bearer token; repr never shows the secret."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    bearer_token: str = field(default="", repr=False)

    def apply(self, session: requests.Session) -> None:
        if self.bearer_token:
            session.headers["Authorization"] = f"Bearer {self.bearer_token}"
        elif self.username:
            session.auth = (self.username, self.password)

    @property
    def kind(self) -> str:
        return "bearer" if self.bearer_token else "basic" if self.username else "none"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # retries after the first try
    backoff_s: float = 0.5  # sleeps 0.5, 1, 2 ... seconds between tries
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0


def make_session(auth: DicomWebAuth, policy: RetryPolicy) -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=policy.attempts,
        connect=policy.attempts,
        read=policy.attempts,
        status=policy.attempts,
        backoff_factor=policy.backoff_s,
        status_forcelist=RETRY_STATUS,
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    auth.apply(session)
    return session


class DicomWebSource:
    """One study on a DICOMweb server. `base_url` is the DICOMweb root (e.g. http://pacs/dicom-web)."""

    def __init__(
        self,
        base_url: str,
        study_uid: str,
        *,
        auth: DicomWebAuth | None = None,
        retry: RetryPolicy | None = None,
        limits: IngestLimits = DEFAULT_LIMITS,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ingest_error(IngestKind.UNSUPPORTED_ENDPOINT, "DICOMweb address must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.study_uid = study_uid
        self.limits = limits
        self._retry = retry or RetryPolicy()
        self._session = session or make_session(auth or DicomWebAuth(), self._retry)
        self._client: Any = None

    def __repr__(self) -> str:
        return f"DicomWebSource({self.describe()!r})"

    def describe(self) -> str:
        return f"DICOMweb {urlsplit(self.base_url).netloc}"

    @property
    def client(self) -> Any:
        """The dicomweb-client, created on first use (it imports a fair amount)."""
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient

            self._client = DICOMwebClient(
                self.base_url,
                session=self._session,
                timeout=(self._retry.connect_timeout_s, self._retry.read_timeout_s),
            )
            self._client.set_http_retry_params(retry=False)  # urllib3 retries, once, in the session
        return self._client

    def series_uids(self) -> list[str]:
        """QIDO-RS: the series of this study (raises study_not_found when the server has none)."""
        found = self._call(lambda: self.client.search_for_series(self.study_uid, get_remaining=True))
        uids = []
        for item in found or []:
            values = item.get(_SERIES_UID_TAG, {}).get("Value") or []
            if values:
                uids.append(str(values[0]))
        if not uids:
            raise ingest_error(IngestKind.STUDY_NOT_FOUND, f"{self.describe()} has no series for the study")
        return uids

    def iter_headers(self) -> Iterator[tuple[InstanceRef, Dataset]]:
        count = 0
        for series_uid in self.series_uids():
            metadata = self._call(
                lambda s=series_uid: self.client.retrieve_series_metadata(self.study_uid, s)
            )
            for item in metadata:
                ds = Dataset.from_json(_without_bulk_data(item))
                count += 1
                if count > self.limits.max_instances:
                    raise ingest_error(
                        IngestKind.TOO_LARGE, f"{self.describe()} study has too many instances"
                    )
                yield InstanceRef(str(ds.get("SOPInstanceUID", "")), self.study_uid, series_uid), ds

    def read_instances(self, refs: Sequence[InstanceRef]) -> Iterator[tuple[InstanceRef, Dataset]]:
        wanted: dict[str, dict[str, InstanceRef]] = {}
        for ref in refs:
            wanted.setdefault(ref.series_uid, {})[ref.key] = ref
        for series_uid, by_sop in wanted.items():
            datasets = self._call(
                lambda s=series_uid: self.client.retrieve_series(
                    self.study_uid, s, media_types=UNCOMPRESSED_MEDIA_TYPES
                )
            )
            for ds in datasets:
                found = by_sop.get(str(ds.get("SOPInstanceUID", "")))
                if found is not None:
                    yield found, ds

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404:
                raise ingest_error(
                    IngestKind.STUDY_NOT_FOUND, f"{self.describe()} does not have the study"
                ) from exc
            raise UpstreamError(f"{self.describe()} answered HTTP {status}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise UpstreamError(f"{self.describe()} is unreachable or timed out") from exc
        except requests.RequestException as exc:
            raise UpstreamError(f"{self.describe()} request failed ({type(exc).__name__})") from exc


def _without_bulk_data(item: dict[str, Any]) -> dict[str, Any]:
    """Drop elements whose value is only a BulkDataURI (pixel data etc.): headers do not need them."""
    return {tag: value for tag, value in item.items() if "BulkDataURI" not in value}
