"""The report's images over HTTP, from a real analysis: layers, presets, caching, no PHI in URLs."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from viewer_support import AnalysedStudy, viewer_path

from cds.viewer import artifacts as art

#: A rendered layer stays small: the page must be usable over a slow link.
MAX_PNG_BYTES = 150_000


def _urls(html: str) -> list[str]:
    return [u.replace("&amp;", "&") for u in re.findall(r'\s(?:src|href|action)="([^"]+)"', html)]


def test_report_lays_out_every_layer_and_no_url_carries_phi(analysed_study: AnalysedStudy) -> None:
    client = analysed_study.app.test_client()
    path = viewer_path(analysed_study.app, analysed_study.analysis_id)
    html = client.get(path).get_data(as_text=True)
    manifest = art.read_manifest(art.viewer_dir(analysed_study.data_dir, analysed_study.analysis_id))
    urls = _urls(html)
    assert f"{path}/img/sagittal/base.png" in urls
    for layer in ("segmentation", "levels"):
        assert f"{path}/img/sagittal/{layer}.png" in urls
    for level, info in manifest.axial.items():
        for layer in ("base", "contour", "measurements"):
            assert f"{path}/img/axial/{level.value}/{info.default_row}/{layer}.png" in urls
    patient_id = analysed_study.patient_ref.split("/", 1)[1]
    assert patient_id in html  # the banner shows the patient ...
    assert not [u for u in urls if patient_id in u or analysed_study.study_uid in u]  # ... no URL does


def test_layers_are_small_cached_pngs(analysed_study: AnalysedStudy) -> None:
    client = analysed_study.app.test_client()
    path = viewer_path(analysed_study.app, analysed_study.analysis_id)
    html = client.get(path).get_data(as_text=True)
    images = sorted({u for u in _urls(html) if "/img/" in u})
    assert len(images) >= 6
    for url in images:
        resp = client.get(url)
        assert resp.status_code == 200, url
        assert resp.mimetype == "image/png"
        assert len(resp.data) < MAX_PNG_BYTES, (url, len(resp.data))
        assert resp.headers["Cache-Control"] == "private, max-age=3600"
        Image.open(io.BytesIO(resp.data)).verify()
        again = client.get(url, headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status_code == 304
    render_dir = art.viewer_dir(analysed_study.data_dir, analysed_study.analysis_id) / "render"
    assert len(list(render_dir.glob("*.png"))) >= len(images)


def test_presets_change_the_base_image(analysed_study: AnalysedStudy) -> None:
    client = analysed_study.app.test_client()
    path = viewer_path(analysed_study.app, analysed_study.analysis_id)
    standard = client.get(f"{path}/img/sagittal/base.png?wl=standard").data
    contrast = client.get(f"{path}/img/sagittal/base.png?wl=contrast").data
    assert standard != contrast
    assert Image.open(io.BytesIO(standard)).size == Image.open(io.BytesIO(contrast)).size


@pytest.mark.parametrize(
    "suffix",
    [
        "/img/sagittal/base.png?wl=lung",
        "/img/sagittal/contour.png",
        "/img/sagittal/../../etc.png",
        "/img/axial/L9-L9/0/base.png",
        "/img/axial/{level}/99/base.png",
        "/img/axial/{level}/0/segmentation.png",
    ],
)
def test_unknown_images_are_404(analysed_study: AnalysedStudy, suffix: str) -> None:
    manifest = art.read_manifest(art.viewer_dir(analysed_study.data_dir, analysed_study.analysis_id))
    level = next(iter(manifest.axial)).value
    client = analysed_study.app.test_client()
    path = viewer_path(analysed_study.app, analysed_study.analysis_id)
    assert client.get(path + suffix.format(level=level)).status_code == 404


def test_images_need_a_valid_link(analysed_study: AnalysedStudy) -> None:
    client = analysed_study.app.test_client()
    path = viewer_path(analysed_study.app, analysed_study.analysis_id)
    resp = client.get(f"{path[:-4]}abcd/img/sagittal/base.png")
    assert resp.status_code == 403 and "Traceback" not in resp.get_data(as_text=True)


def test_viewer_pages_and_images_never_import_torch(tmp_path: Path) -> None:
    """The web process renders everything from files: no torch, no pipeline, no DICOM reader."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from viewer_support import store_analysis, synthetic_artifacts, viewer_path
        from cds import create_app
        from cds.config import Settings
        from cds.store.migrate import upgrade
        settings = Settings(data_dir=Path({str(tmp_path)!r}), secret_key="s", dev_mode=True)
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        analysis_id = store_analysis(app)
        synthetic_artifacts(settings.data_dir, analysis_id)
        client = app.test_client()
        path = viewer_path(app, analysis_id)
        urls = [path, path + "/img/sagittal/base.png", path + "/img/sagittal/levels.png",
                path + "/img/axial/L4-L5/1/measurements.png", path + "/explain/status"]
        statuses = [client.get(u).status_code for u in urls]
        form = {{"target": "card", "verdict": "agree"}}
        statuses.append(client.post(path + "/feedback", data=form).status_code)
        watched = ("torch", "torchvision", "transformers", "pydicom", "cds.pipeline", "cds.ml")
        print(json.dumps({{"statuses": statuses, "heavy": sorted(m for m in watched if m in sys.modules)}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 200, 200, 200, 200, 303]
    assert report["heavy"] == []
