"""Viewer fixtures: a tiny generated study analysed ONCE per session by the real ANALYZE job.

The analysis runs the real pipeline (models in models/) through the real job handler, which
writes the viewer artifacts exactly as in production; the report, image and browser tests then
read what that run stored. Generation + analysis take ~10-40 s depending on machine load.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from viewer_support import AnalysedStudy

from cds import create_app
from cds.config import Settings
from cds.extensions import services
from cds.store.records import JobRecord

SECRET = "viewer-session-secret"
SEED = 4242


@pytest.fixture(scope="session")
def analysed_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalysedStudy]:
    from cds.dicom import load_study
    from cds.domain import AnalysisStatus
    from cds.jobs.analysis import request_analysis
    from cds.jobs.handlers import default_registry
    from cds.jobs.runner import LocalRunner
    from cds.store import queries
    from cds.store.migrate import upgrade
    from cds.synth.protocol import StudyOptions
    from cds.synth.study import generate_study

    root = tmp_path_factory.mktemp("viewer-session")
    folder = generate_study(
        SEED, root / "studies", StudyOptions(sag_matrix=(256,), ax_matrix=(224,)), study_name="SYN-VIEWER"
    )
    study = load_study(folder / "dicom")
    # Eager explanations off: the browser test drives the Explain button itself.
    # Study list on: the browser test drives it as the demo does (off by default; see test_viewer_studies).
    settings = Settings(
        data_dir=root / "data", secret_key=SECRET, dev_mode=True, explain_eager="off", study_list_enabled=True
    )
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    svc = services(app)
    patient_ref = f"Patient/{study.patient_id}"
    with svc.db.session() as s:
        queries.upsert_study(
            s,
            study.study_uid,
            patient_ref=patient_ref,
            study_date=study.study_date,
            description=study.description,
            source_uri=str((folder / "dicom").resolve()),
        )
    analysis = request_analysis(svc.db, svc.jobs, study.study_uid)
    LocalRunner(svc.jobs, default_registry(), settings, retry_delay_s=0).run_until_idle()
    with svc.db.session(readonly=True) as s:
        record = queries.get_analysis(s, analysis.id)
        assert record is not None
        errors = [j.last_error for j in s.scalars(sa.select(JobRecord))]
        assert record.status is AnalysisStatus.COMPLETE, f"real pipeline did not complete: {errors}"
    yield AnalysedStudy(settings, app, analysis.id, study.study_uid, patient_ref, settings.data_dir)
    svc.close()
