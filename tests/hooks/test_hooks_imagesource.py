"""Where the images of a study known only from the EHR are taken from (cds.hooks.imagesource)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hooks_support import PATIENT_ID, STUDY_UID, bundle, imaging_study

from cds.config import Settings
from cds.hooks.imagesource import source_uri_for
from cds.hooks.studies import LumbarStudy, lumbar_mri_studies

WADO = {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "dicom-wado-rs"}


def _endpoint(address: str, eid: str = "ep-1") -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": eid,
        "status": "active",
        "connectionType": WADO,
        "address": address,
        "payloadType": [{"text": "DICOM"}],
    }


def _study(*endpoints: dict[str, Any], ref: str | None = "Endpoint/ep-1") -> LumbarStudy:
    resource = imaging_study()
    if ref:
        resource["endpoint"] = [{"reference": ref}]
    (study,) = lumbar_mri_studies(bundle(resource, *endpoints), PATIENT_ID)
    return study


def test_allowed_endpoint_of_the_imaging_study_is_used(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dicomweb_allowed_hosts=("pacs.hospital.example",))
    study = _study(_endpoint("https://pacs.hospital.example/dicom-web/"))
    assert source_uri_for(study, settings) == f"https://pacs.hospital.example/dicom-web/studies/{STUDY_UID}"


def test_endpoint_on_a_host_not_allowed_falls_back_to_the_configured_pacs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dicomweb_url="https://pacs.local/dicom-web")
    study = _study(_endpoint("http://169.254.169.254/latest"))
    assert source_uri_for(study, settings) == f"https://pacs.local/dicom-web/studies/{STUDY_UID}"


def test_local_folder_named_by_the_uid_is_used(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dicomweb_url="https://pacs.local/dicom-web")
    folder = settings.resolved_dicom_dir / STUDY_UID / "dicom"
    folder.mkdir(parents=True)
    assert source_uri_for(_study(ref=None), settings) == str(folder)


def test_no_source_at_all_is_none(tmp_path: Path) -> None:
    assert source_uri_for(_study(ref=None), Settings(data_dir=tmp_path)) is None
