"""PACS trigger latency and DICOMweb retrieval rate, against a real Orthanc with the Lua script.

    .venv/bin/python bench/pacs_trigger_bench.py [--studies 3] [--full-size]

Per study: upload end -> notification arrives (the ANALYZE job row exists; includes Orthanc's
StableAge, 1 s here, 60 s in docker/orthanc/orthanc.json) -> analysis finished (real pipeline over
DICOMweb, one local worker thread) -> patient-view card (real hook endpoint, signed ES384 JWT).
Then DICOMweb retrieval of every study with the ingestion layer (instances/s). Prints median and
p95 of each, and the machine load. Needs Orthanc + the DICOMweb plugin and the shipped models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "pacs"), str(REPO / "tests" / "hooks")]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, values: list[float], unit: str) -> str:
    med, p95 = statistics.median(values), pct(values, 0.95)
    return f"{name:<34} median {med:8.1f} {unit}   p95 {p95:8.1f} {unit}   n={len(values)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--full-size", action="store_true", help="default synthetic matrices (slower)")
    parser.add_argument("--seed", type=int, default=4100)
    args = parser.parse_args()

    import pydicom
    from hooks_support import ISSUER, Caller, SigningKey, bundle, imaging_study
    from pacs_support import PASSWORD, USER, live_app, running_orthanc

    from cds import create_app
    from cds.config import Settings
    from cds.dicom import load_study
    from cds.dicom.sources.dicomweb import DicomWebAuth, DicomWebSource
    from cds.domain import AnalysisStatus
    from cds.extensions import services
    from cds.jobs.handlers import default_registry
    from cds.jobs.runner import LocalRunner
    from cds.store import queries
    from cds.store.migrate import upgrade
    from cds.store.records import JobRecord
    from cds.synth.study import StudyOptions, generate_study

    options = (
        StudyOptions()
        if args.full_size
        else StudyOptions(sag_matrix=(128,), ax_matrix=(96,), min_sag_slices=9)
    )
    token = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        work = Path(tmp)
        folders = [
            generate_study(args.seed + i, work / "synth", options) / "dicom" for i in range(args.studies)
        ]
        uids = [str(pydicom.dcmread(next(iter(f.glob("*.dcm")))).StudyInstanceUID) for f in folders]
        key = SigningKey()
        (work / "clients.json").write_text(json.dumps([{"iss": ISSUER, "jwks": key.jwks()}]))
        url = f"sqlite:///{work / 'cds.db'}"
        upgrade(url)
        settings = Settings(
            data_dir=work / "data", database_url=url, secret_key=uuid.uuid4().hex,
            clients_file=work / "clients.json", public_base_url="https://cds.example.org",
            pacs_notify_token=token,
            dicomweb_username=USER, dicomweb_password=PASSWORD,
        )  # fmt: skip
        app = create_app(settings)
        svc = services(app)
        notify, analyse, card_ms, total, rate = [], [], [], [], []
        with live_app(app) as base:
            env = {"CDS_PACS_NOTIFY_URL": f"{base}/pacs/notifications", "CDS_PACS_NOTIFY_TOKEN": token}
            with running_orthanc(work / "orthanc", lua=True, env=env) as orthanc:
                final = settings.with_overrides(dicomweb_url=orthanc.dicomweb_url)
                object.__setattr__(svc, "settings", final)
                runner = LocalRunner(svc.jobs, default_registry(), final, workers=1, poll_interval_s=0.1)
                runner.start()
                caller = Caller(app.test_client(), key, "https://cds.example.org")
                try:
                    for folder, uid in zip(folders, uids, strict=True):
                        orthanc.upload_folder(folder)
                        t_up = time.monotonic()
                        t_job = t_done = None
                        while t_done is None and time.monotonic() - t_up < 600:
                            with svc.db.session(readonly=True) as s:
                                if t_job is None and any(
                                    j.payload.get("study_uid") == uid for j in s.query(JobRecord).all()
                                ):
                                    t_job = time.monotonic()
                                record = (
                                    queries.latest_analysis(s, uid) if queries.study_by_uid(s, uid) else None
                                )
                                finished = (
                                    AnalysisStatus.COMPLETE,
                                    AnalysisStatus.UNANALYSABLE,
                                    AnalysisStatus.FAILED,
                                )
                                if record is not None and record.status in finished:
                                    t_done = time.monotonic()
                                    status, reason = record.status, record.reason
                            time.sleep(0.05)
                        if t_job is None or t_done is None:
                            print(f"study {uid}: not analysed within 600 s", file=sys.stderr)
                            return 1
                        body = {
                            "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                            "context": {"userId": "Practitioner/b", "patientId": "bench"},
                            "prefetch": {"studies": bundle(imaging_study(uid, patient="bench"))},
                        }  # fmt: skip
                        t0 = time.monotonic()
                        response = caller.post("/cds-services/lumbar-mri-patient-view", body)
                        t_card = time.monotonic()
                        summary = response.get_json()["cards"][0]["summary"]
                        notify.append(t_job - t_up)
                        analyse.append(t_done - t_job)
                        card_ms.append(1000 * (t_card - t0))
                        total.append(t_card - t_up)
                        print(
                            f"  {uid[-12:]}: {status.value:<12} card: {summary[:60]} ({reason or ''})"[:160]
                        )
                finally:
                    runner.stop()
                for folder, uid in zip(folders, uids, strict=True):
                    n = len(list(folder.glob("*.dcm")))
                    source = DicomWebSource(orthanc.dicomweb_url, uid, auth=DicomWebAuth(USER, PASSWORD))
                    t0 = time.monotonic()
                    load_study(source)
                    rate.append(n / (time.monotonic() - t0))
        svc.close()
    print(f"\nPACS trigger, {args.studies} {'full-size' if args.full_size else 'small (128/96 px)'} studies; "
          f"Orthanc StableAge 1 s; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(line("upload end -> notification", notify, "s"))
    print(line("notification -> analysis stored", analyse, "s"))
    print(line("patient-view card (hook call)", card_ms, "ms"))
    print(line("upload end -> card available", total, "s"))
    print(line("DICOMweb load_study (all series)", rate, "inst/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
