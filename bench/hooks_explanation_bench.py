"""CPU per hook call of the explanation on cards (issue 5), in one process.

What it measures: the part of the patient-view hot path that reads a stored analysis and turns it
into cards, for one analysed study (25 findings, L4-L5 severe) whose explanation is
  none      never requested (the hook benchmark's case),
  pending   requested, being computed,
  complete  finished, with a template rationale and N heatmap PNGs on disk,
as CPU microseconds per call (time.process_time, single thread) of:
  status    the status statement (cds.hooks.hotstore: analyses JOIN studies LEFT JOIN explanations),
  lookup    the catalog lookup (status statement + cached result and explanation),
  cards     lookup + card decision and texts + the suggested DiagnosticReport + JSON encoding.
JWT verification, the replay claim and the audit write are not included (bench/hooks_bench.py
measures the whole call under gunicorn). Each figure is the minimum and the median over --repeat
rounds of --calls calls: on a shared machine the minimum is the steadier one.

Before/after a change, run it on both trees (e.g. a `git worktree` of the older commit) with the
same arguments: the "none" row is the benchmark's case, the others exist only after the change.

Run:  .venv/bin/python bench/hooks_explanation_bench.py [--calls 2000] [--repeat 7] [--heatmaps 2]
      [--states none,pending,complete]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATIENT_ID = "bench-patient"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77"
RATIONALE = (
    "L4-L5: severe central canal stenosis, dural sac area 60.0 mm2 (< 75 mm2). "
    "The heatmap centres on the posterior disc margin."
)


def _per_call_us(fn: Callable[[], Any], calls: int, repeat: int) -> tuple[float, float]:
    rounds = []
    for _ in range(repeat):
        cpu0 = time.process_time()
        for _ in range(calls):
            fn()
        rounds.append((time.process_time() - cpu0) / calls * 1e6)
    return min(rounds), statistics.median(rounds)


def _store(db_url: str, data_dir: Path, state: str, n_heatmaps: int) -> None:
    from cds.domain import (
        THRESHOLDS,
        AnalysisResult,
        AnalysisStatus,
        Condition,
        ExplanationStatus,
        Finding,
        Grade,
        Level,
    )
    from cds.store import queries
    from cds.store.db import Database
    from cds.store.migrate import upgrade

    upgrade(db_url)
    findings = []
    for level in Level:
        for cond in Condition:
            limits = THRESHOLDS[cond]
            severe = level is Level.L4_L5 and cond is Condition.SPINAL_CANAL
            value = limits.severe_below * 0.8 if severe else limits.moderate_below * 1.2
            grade = Grade.SEVERE if severe else Grade.NORMAL_MILD
            findings.append(Finding(level, cond, grade, 0.9, {cond.deciding_measurement: value}))
    db = Database(db_url)
    with db.session() as s:
        queries.upsert_study(s, STUDY_UID, patient_ref="MRN-B", study_date=date(2026, 7, 1), source_uri="/x")
        analysis_id = queries.save_analysis(
            s, STUDY_UID, AnalysisResult(AnalysisStatus.COMPLETE, tuple(findings))
        ).id
    if state == "pending":
        with db.session() as s:
            queries.save_explanation(s, analysis_id, status=ExplanationStatus.PENDING)
    elif state == "complete":
        heatmaps = {}
        for level, cond in [(lv, c) for lv in Level for c in Condition][:n_heatmaps]:
            relative = f"artifacts/{analysis_id}/gradcam/{level.value}_{cond.value}.png"
            (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            (data_dir / relative).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(1000))
            heatmaps[f"{level.value}/{cond.value}"] = {
                "overlay": relative,
                "level": level.value,
                "condition": cond.value,
                "slice_index": 3,
            }
        with db.session() as s:
            queries.save_explanation(
                s,
                analysis_id,
                status=ExplanationStatus.COMPLETE,
                rationale=RATIONALE,
                writer="template",
                heatmaps=heatmaps,
            )
    db.dispose()


def _measure(state: str, args: argparse.Namespace) -> dict[str, Any]:
    from cds.config import Settings
    from cds.hooks.advice import advise
    from cds.hooks.cards import CardRequest, Framing, prune_empty
    from cds.hooks.encode import encode_cards
    from cds.hooks.hotstore import HotStore
    from cds.hooks.presenter import LinkPresenter
    from cds.hooks.storecatalog import ResultCache, StoreCatalog
    from cds.hooks.studies import lumbar_mri_studies
    from cds.jobs.queue import JobQueue
    from cds.signing import LinkPurpose, LinkSigner
    from cds.store.db import Database

    with tempfile.TemporaryDirectory(prefix="hooks-explanation-bench-") as tmp:
        data_dir = Path(tmp)
        db_url = f"sqlite:///{data_dir / 'cds.db'}"
        _store(db_url, data_dir, state, args.heatmaps)
        settings = Settings(data_dir=data_dir, database_url=db_url, secret_key="bench-secret-" + "x" * 20)
        db = Database(db_url)
        store, jobs, cache = HotStore(db), JobQueue(db), ResultCache()
        presenter = LinkPresenter(
            "https://cds.example.org",
            LinkSigner(settings.secret_key, LinkPurpose.VIEWER).sign,
            LinkSigner(settings.secret_key, LinkPurpose.EXPLAIN).sign,
            settings.viewer_link_ttl_s,
        )
        study = {
            "resourceType": "ImagingStudy",
            "id": "bench-study",
            "status": "available",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}],
            "started": "2026-07-01T10:00:00Z",
            "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}],
            "description": "MRI LUMBAR SPINE WITHOUT CONTRAST",
        }
        studies = lumbar_mri_studies({"resourceType": "Bundle", "entry": [{"resource": study}]}, PATIENT_ID)
        req = CardRequest(Framing.CURRENT, PATIENT_ID, date(2026, 11, 23))
        uids = [s.study_uid for s in studies]

        def catalog() -> StoreCatalog:
            return StoreCatalog(store, db, jobs, cache, "", settings)

        def cards() -> bytes:
            decided = [prune_empty(c) for c in advise(studies, req, catalog(), presenter)]
            return encode_cards(decided, presenter.fragment)

        body = cards()  # warm: result, explanation and report caches filled
        expected = {
            "none": b"Explain these findings",
            "pending": b"being computed",
            "complete": b"presentedForm",
        }
        if expected[state] not in body:
            raise SystemExit(f"unexpected card for state {state}")
        row = {
            "state": state,
            "status": _per_call_us(lambda: store.analysis_status(uids), args.calls, args.repeat),
            "lookup": _per_call_us(lambda: catalog().lookup(uids), args.calls, args.repeat),
            "cards": _per_call_us(cards, max(1, args.calls // 2), args.repeat),
            "bytes": len(body),
        }
        db.dispose()
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--heatmaps", type=int, default=2, help="heatmaps of the complete explanation")
    parser.add_argument(
        "--states",
        default="none,pending,complete",
        help="comma-separated; 'none' alone on a tree from before explanations reached the cards",
    )
    args = parser.parse_args(argv)
    rows = [_measure(state, args) for state in args.states.split(",")]
    print(
        f"CPU us per call, min / median of {args.repeat} rounds; SQLite; {args.heatmaps} heatmaps; "
        f"CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'explanation':<12} {'status':>15} {'lookup':>15} {'cards':>15} {'bytes':>8}")
    for r in rows:
        cells = " ".join(f"{r[k][0]:>7.1f} / {r[k][1]:>5.1f}" for k in ("status", "lookup", "cards"))
        print(f"{r['state']:<12} {cells} {r['bytes']:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
