"""The report against a real FHIR R4 server process (sekmet-fhir, SQLite-backed, strict inbound
validation): the transaction Bundle is accepted, a retried write creates nothing new (conditional
create on the identifiers), references resolve, and FhirClient pages through real searchsets.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cds.domain import AnalysisResult, Condition, Level
from cds.errors import UpstreamError
from cds.fhir import codes
from cds.fhir.client import FhirClient
from cds.fhir.report import ReportContext, ReportImage, build_diagnostic_report, build_report_bundle

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sekmet_command() -> list[str]:
    exe = Path(sys.executable).with_name("sekmet")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("sekmet")
    if found is None:
        pytest.fail("sekmet-fhir is a test dependency (pyproject [test]) but is not installed")
    return [found]


@pytest.fixture(scope="module")
def fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("sekmet")
    port = _free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    (workdir / "settings.yaml").write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {workdir / 'data'}\n"
        "simulator:\n  enabled: false\n"
    )
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [*_sekmet_command(), "serve", "-c", str(workdir / "settings.yaml")],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SEKMET_CONFIG": str(workdir / "settings.yaml")},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sekmet-fhir did not start; see {workdir / 'server.log'}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def patient_id(fhir_base: str) -> str:
    resp = requests.post(
        f"{fhir_base}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Synthetic"}]},
        headers=FHIR_JSON,
    )
    assert resp.status_code == 201, resp.text[:500]
    return str(resp.json()["id"])


def _post_bundle(base: str, bundle: dict[str, Any]) -> list[str]:
    resp = requests.post(base, json=bundle, headers=FHIR_JSON, timeout=30)
    assert resp.status_code == 200, resp.text[:1000]
    return [entry["response"]["status"] for entry in resp.json()["entry"]]


def test_transaction_is_accepted_and_idempotent(
    fhir_base: str, patient_id: str, analysis: AnalysisResult, ctx: ReportContext
) -> None:
    image = ReportImage("gradcam-l4-l5", "Grad-CAM L4-L5", data=b"\x89PNG\r\n\x1a\n",
                        level=Level.L4_L5, condition=Condition.SPINAL_CANAL)  # fmt: skip
    ctx = ReportContext(
        analysis_id="roundtrip-1",
        patient_ref=patient_id,
        issued=ctx.issued,
        study_uid=ctx.study_uid,
        study_date=ctx.study_date,
        images=(image,),
    )
    bundle = build_report_bundle(analysis, ctx)
    client = FhirClient(fhir_base, None, ["127.0.0.1"], timeout_s=10)
    first = [e["response"]["status"] for e in client.transaction(bundle)["entry"]]
    assert len(first) == 1 + 25 + 1 + 1 and all(s.startswith("201") for s in first)
    second = [e["response"]["status"] for e in client.transaction(bundle)["entry"]]
    assert all(s.startswith("200") for s in second)  # matched by identifier: nothing created

    reports = client.search_resources(
        "DiagnosticReport", {"identifier": f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|roundtrip-1"}
    )
    assert len(reports) == 1
    report = reports[0]
    assert report["status"] == "preliminary"
    assert report["subject"]["reference"] == f"Patient/{patient_id}"
    assert len(report["result"]) == 25
    assert report["media"][0]["link"]["reference"].startswith("Media/")
    obs = client.read(report["result"][0]["reference"])
    assert obs["resourceType"] == "Observation"
    assert obs["device"]["reference"].startswith("Device/")
    assert obs["meta"]["security"][0]["code"] == "AIAST"
    device = client.read(obs["device"]["reference"])
    assert {v["value"] for v in device["version"]} == {"1.2.0", "0.4.1"}


def test_client_pages_through_a_real_searchset(fhir_base: str, patient_id: str, analysis: AnalysisResult,
                                               ctx: ReportContext) -> None:  # fmt: skip
    ctx = ReportContext(analysis_id="roundtrip-2", patient_ref=patient_id, issued=ctx.issued)
    _post_bundle(fhir_base, build_report_bundle(analysis, ctx))
    client = FhirClient(fhir_base, None, ["127.0.0.1"], timeout_s=10, max_pages=10)
    found = client.search_resources("Observation", {"subject": f"Patient/{patient_id}", "_count": 7})
    ids = [
        o["identifier"][0]["value"] for o in found if o["identifier"][0]["value"].startswith("roundtrip-2/")
    ]
    assert len(ids) == len(set(ids)) == 25
    with pytest.raises(UpstreamError, match="more than 2 pages"):
        FhirClient(fhir_base, None, ["127.0.0.1"], 10, max_pages=2).search(
            "Observation", {"subject": f"Patient/{patient_id}", "_count": 7}
        )


def test_contained_report_is_accepted_by_the_server(
    fhir_base: str, patient_id: str, analysis: AnalysisResult, ctx: ReportContext
) -> None:
    ctx = ReportContext(analysis_id="roundtrip-3", patient_ref=patient_id, issued=ctx.issued)
    resp = requests.post(
        f"{fhir_base}/DiagnosticReport",
        json=build_diagnostic_report(analysis, ctx),
        headers=FHIR_JSON,
        timeout=30,
    )
    assert resp.status_code == 201, resp.text[:1000]
    assert len(resp.json()["contained"]) == 26
