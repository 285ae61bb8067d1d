"""The viewer in a real browser: playwright driving the Debian chromium against the app served by a
real HTTP server thread, with a real job worker, on a study analysed by the real pipeline.

One browser for the whole session (fresh user-data-dir, no network beyond 127.0.0.1, no
playwright browser download). Screenshots go to var/test-results/screenshots/ as test artifacts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from viewer_support import AnalysedStudy, store_analysis, synthetic_artifacts, viewer_path

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "test-results" / "screenshots"
#: The explain job runs Grad-CAM on CPU (or fails fast when its handler is missing).
EXPLAIN_TIMEOUT_S = 240.0


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class Live:
    base_url: str
    study: AnalysedStudy
    requested: list[str]


@pytest.fixture(scope="session")
def live(analysed_study: AnalysedStudy) -> Iterator[Live]:
    """The analysed study's app on 127.0.0.1 (werkzeug server thread) with a local job worker."""
    from werkzeug.serving import make_server

    from cds.extensions import services
    from cds.jobs.handlers import default_registry
    from cds.jobs.runner import LocalRunner

    server = make_server("127.0.0.1", 0, analysed_study.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="viewer-test-server", daemon=True)
    thread.start()
    runner = LocalRunner(
        services(analysed_study.app).jobs,
        default_registry(),
        analysed_study.settings,
        poll_interval_s=0.2,
        retry_delay_s=0,
    )
    runner.start()
    try:
        yield Live(f"http://127.0.0.1:{server.server_port}", analysed_study, [])
    finally:
        runner.stop()
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.is_file():
        if _under_ci():
            pytest.fail("chromium is missing: .ci/setup installs it from .ci/debian-packages.txt")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, live: Live) -> Iterator[Any]:
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("request", lambda req: live.requested.append(req.url))
    tab.set_default_timeout(30_000)
    try:
        yield tab
    finally:
        tab.close()
    assert errors == [], f"script errors on the page: {errors}"


def _shot(page: Any, name: str, full_page: bool = True) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    if full_page:
        _load_all_images(page)
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _readme_shot(page: Any) -> Path:
    """The README picture: header + quick read, then the images through the first level, 960 px
    wide, 256 colours (about 120 KB). tests/viewer/screenshots/report.png is a copy of it."""
    from PIL import Image

    scroll_y = float(page.evaluate("window.scrollY"))  # boxes are viewport-relative

    def box(selector: str) -> dict[str, float]:
        found = page.locator(selector).first.bounding_box()
        assert found is not None, selector
        return {**found, "y": found["y"] + scroll_y}

    top_end = box("#overview")["y"] + box("#overview")["height"] + 8
    images = box("#images")["y"] - 4
    level = box(".level .panel-body")
    images_end = level["y"] + level["height"] + 8
    full = SCREENSHOTS / "report.png"
    with Image.open(full) as im:
        rgb = im.convert("RGB")
        parts = [
            rgb.crop((0, 0, rgb.width, int(top_end))),
            rgb.crop((0, int(images), rgb.width, int(images_end))),
        ]
    out = Image.new("RGB", (parts[0].width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    out = out.resize((960, round(out.height * 960 / out.width)), Image.Resampling.LANCZOS)
    path = SCREENSHOTS / "report-readme.png"
    out.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


def _open_report(page: Any, live: Live, analysis_id: str | None = None) -> str:
    url = live.base_url + viewer_path(live.study.app, analysis_id or live.study.analysis_id, 3600)
    resp = page.goto(url)
    assert resp is not None and resp.status == 200
    page.wait_for_load_state("networkidle")
    return url


def _until(page: Any, selector: str, predicate: str, timeout_s: float = 30.0) -> None:
    """Poll a predicate on an element from Python (the page's CSP forbids the eval that
    page.wait_for_function would need, and the tests keep the production CSP)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if page.eval_on_selector(selector, predicate):
                return
        except Exception:  # navigating (the page reloads itself when the explanation is done)
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector}: {predicate} not true within {timeout_s} s")
        time.sleep(0.25)


def _load_all_images(page: Any, timeout_s: float = 60.0) -> None:
    """Make lazy images load now (full-page screenshots and PDFs do not scroll) and wait for them."""
    page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    deadline = time.monotonic() + timeout_s
    check = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    while not page.evaluate(check):
        assert time.monotonic() < deadline, "images did not load"
        time.sleep(0.25)


def _rendered(page: Any, selector: str) -> bool:
    return bool(page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0"))


def test_report_table_images_and_overlay_toggles(page: Any, live: Live) -> None:
    from cds.extensions import services
    from cds.store import queries

    _open_report(page, live)
    with services(live.study.app).db.session(readonly=True) as s:
        record = queries.get_analysis(s, live.study.analysis_id)
        assert record is not None
        findings = record.to_result().findings
    # The table: one row per finding, grade as text and colour, probability, measurement, threshold.
    assert page.locator("#findings tbody tr").count() == len(findings)
    first = page.locator("#findings tbody tr").first
    grade = first.locator(".grade")
    assert grade.inner_text().strip() in {"normal/mild", "moderate", "severe"}
    assert "grade-" in (grade.get_attribute("class") or "")
    assert "%" in first.locator("td").nth(3).inner_text()
    assert page.locator("#overview tbody tr").count() == len({f.level for f in findings})
    assert live.study.patient_ref in page.locator("#patient-banner").inner_text()
    # Images: every layer loaded.
    assert _rendered(page, ".sagittal img.base")
    for img in page.locator(".sagittal img.overlay").all():
        assert img.evaluate("i => i.complete && i.naturalWidth > 0")
    assert page.locator(".axial-panel img.base[loading=lazy]").count() > 0  # below the fold: on demand
    _load_all_images(page)
    _shot(page, "report")
    _shot(page, "report-top", full_page=False)
    _readme_shot(page)

    # Keyboard: Tab from the window preset reaches the first overlay toggle; Space switches it.
    page.focus("#wl-preset")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.dataset.overlay")
    assert focused == "segmentation"
    overlay = page.locator('.sagittal img.overlay[data-overlay="segmentation"]')
    assert overlay.is_visible()
    page.keyboard.press("Space")
    assert overlay.is_hidden()
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    assert page.locator('.sagittal img.overlay[data-overlay="levels"]').is_hidden()
    _shot(page, "report-overlays-off", full_page=False)
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Space")
    assert overlay.is_visible()

    # Window/level preset: the base images are re-rendered with the chosen preset.
    page.select_option("#wl-preset", "contrast")
    _until(
        page, ".sagittal img.base", "i => i.src.includes('wl=contrast') && i.complete && i.naturalWidth > 0"
    )

    # Slice stepping at a level with more than one slice.
    panel = page.locator(".axial-panel").first
    rows = int(panel.get_attribute("data-rows") or "1")
    if rows > 1:
        before = panel.locator("img.base").get_attribute("src")
        button = panel.locator(".slice-next") if not panel.locator(".slice-next").is_disabled() else None
        button = button or panel.locator(".slice-prev")
        panel.scroll_into_view_if_needed()
        button.click()
        assert panel.locator("img.base").get_attribute("src") != before
        _until(page, ".axial-panel img.base", "i => i.complete && i.naturalWidth > 0")


def test_explain_runs_to_completion(page: Any, live: Live) -> None:
    _open_report(page, live)
    status = page.locator("#explanation-status")
    assert status.get_attribute("data-status") == "none"
    page.click("#explain-button")
    # The POST answers at once with the job's state; a fast job may already be done by then.
    _until(page, "#explanation-status", "e => e.dataset.status !== 'none'")
    if page.locator("#explanation-progress").count():
        _shot(page, "explain-progress", full_page=False)
    _until(
        page,
        "#explanation-status",
        "e => ['complete', 'failed'].includes(e.dataset.status)",
        timeout_s=EXPLAIN_TIMEOUT_S,
    )
    page.wait_for_load_state("networkidle")
    final = page.locator("#explanation-status").get_attribute("data-status")
    _shot(page, "explain-done")
    try:
        from cds.explain.job import explain_analysis  # noqa: F401  (the Grad-CAM handler, when installed)

        handler_installed = True
    except ImportError:
        handler_installed = False
    if handler_installed:
        assert final == "complete"
        assert page.locator("#rationale-block").is_visible()
        assert "Machine-generated text" in page.locator("#rationale-block").inner_text()
        assert page.locator("#rationale-writer").inner_text().strip()
    else:  # the job ran and failed with a stated reason: nothing is faked
        assert final == "failed"
        assert page.locator("#explanation-reason").inner_text().strip()
        assert page.locator("#explain-button").inner_text() == "Try the explanation again"


def test_complete_explanation_shows_heatmaps(page: Any, live: Live) -> None:
    """A stored complete explanation (heatmap PNG made here) renders as the explain job would leave it."""
    from PIL import Image

    from cds.domain import ExplanationStatus
    from cds.extensions import services
    from cds.store import queries

    app = live.study.app
    analysis_id = store_analysis(app, study_uid="1.2.826.0.1.3680043.8.498.991", patient_ref="Patient/p-heat")
    data_dir = live.study.data_dir
    synthetic_artifacts(data_dir, analysis_id)
    png = data_dir / "artifacts" / analysis_id / "gradcam" / "L4-L5_spinal_canal.png"
    png.parent.mkdir(parents=True)
    Image.radial_gradient("L").resize((160, 160)).convert("RGB").save(png)
    with services(app).db.session() as s:
        queries.save_explanation(
            s,
            analysis_id,
            status=ExplanationStatus.COMPLETE,
            rationale="Severe central canal stenosis at L4-L5 (dural sac area 61.8 mm², below 75 mm²).",
            writer="template",
            heatmaps={"L4-L5/spinal_canal": {"overlay": str(png.relative_to(data_dir)), "slice_index": 3}},
        )
    _open_report(page, live, analysis_id)
    page.locator("#explanation").scroll_into_view_if_needed()
    assert page.locator("#explanation-status").get_attribute("data-status") == "complete"
    _until(page, ".heatmap img", "i => i.complete && i.naturalWidth > 0")  # lazy: loads once in view
    caption = page.locator(".heatmap figcaption").inner_text()
    assert "severe central canal stenosis" in caption and "Machine-generated" in caption
    page.locator("#rationale-block").screenshot(path=str(SCREENSHOTS / "explanation-complete-rationale.png"))
    _shot(page, "explanation-complete")


def test_feedback_validated_stored_and_shown_after_reload(page: Any, live: Live) -> None:
    url = _open_report(page, live)
    form_block = page.locator(".level-findings .feedback").first
    target = form_block.get_attribute("data-target")
    form_block.locator("summary").click()
    form_block.locator("input[value=disagree]").check()
    form_block.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    block = page.locator(f'.feedback[data-target="{target}"]')
    assert "Please choose a reason for disagreeing." in block.locator(".form-error").inner_text()
    assert page.evaluate("document.activeElement.name") == "reason"  # focus moved to what is missing
    _shot(page, "feedback-error", full_page=False)
    block.locator("select[name=reason]").select_option("grade_too_high")
    block.locator("textarea[name=comment]").fill("Looks moderate to me")
    block.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    page.goto(url)
    shown = page.locator(f'.feedback[data-target="{target}"] .feedback-shown')
    assert shown.get_attribute("data-verdict") == "disagree"
    assert "You disagreed: Grade too high (overcalled)" in shown.inner_text()
    assert "Looks moderate to me" in shown.inner_text()
    # Card-level verdict too.
    card = page.locator('.feedback[data-target="card"]')
    card.locator("summary").click()
    card.locator("input[value=agree]").check()
    card.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    page.reload()
    assert "You agreed" in page.locator('.feedback[data-target="card"] .feedback-shown').inner_text()
    shown.scroll_into_view_if_needed()
    _shot(page, "feedback-shown", full_page=False)


def test_print_layout_keeps_images_and_drops_controls(page: Any, live: Live) -> None:
    _open_report(page, live)
    page.emulate_media(media="print")
    try:
        assert page.locator(".sagittal img.base").is_visible()
        assert page.locator(".axial-panel img.base").first.is_visible()
        assert page.locator(".toolbar").is_hidden()
        assert page.locator(".overlay-toggle").first.is_hidden()
        assert page.locator(".feedback details").first.is_hidden()
        _load_all_images(page)
        _shot(page, "report-print")
        pdf = SCREENSHOTS / "report-print.pdf"
        page.pdf(path=str(pdf), print_background=True)
        assert pdf.stat().st_size > 10_000
    finally:
        page.emulate_media(media="screen")


def test_study_list_filters_and_opens_a_report(page: Any, live: Live) -> None:
    from cds.extensions import services
    from cds.viewer.studies import sign_study_list_token

    token = sign_study_list_token(services(live.study.app).settings.secret_key, 600)
    resp = page.goto(f"{live.base_url}/studies/{token}")
    assert resp is not None and resp.status == 200
    page.fill("#f-patient", live.study.patient_ref.split("/", 1)[1])
    page.click(".studies-filter button[type=submit]")
    page.wait_for_load_state("networkidle")
    rows = page.locator("#studies tbody tr")
    assert rows.count() == 1 and live.study.patient_ref in rows.first.inner_text()
    _shot(page, "study-list", full_page=False)
    rows.first.locator("a").click()
    page.wait_for_load_state("networkidle")
    assert page.locator("#analysis-status").get_attribute("data-status") == "complete"


def test_expired_and_tampered_links_get_clear_pages(page: Any, live: Live) -> None:
    from cds.extensions import services
    from cds.signing import sign_viewer_token

    secret = services(live.study.app).settings.secret_key
    token = sign_viewer_token(live.study.analysis_id, 1, secret_key=secret)
    time.sleep(2.1)
    resp = page.goto(f"{live.base_url}/viewer/{token}")
    assert resp is not None and resp.status == 410
    assert page.locator("h1").inner_text() == "This link has expired"
    assert "Traceback" not in page.content()
    _shot(page, "link-expired", full_page=False)
    good = sign_viewer_token(live.study.analysis_id, 600, secret_key=secret)
    resp = page.goto(f"{live.base_url}/viewer/{good[:-4]}AAAA")
    assert resp is not None and resp.status == 403
    assert page.locator("h1").inner_text() == "This link is not valid"


def test_no_browser_request_carried_phi(live: Live) -> None:
    """Runs last in this file: every URL the browser requested in the session, checked for PHI."""
    patient_id = live.study.patient_ref.split("/", 1)[1]
    assert live.requested, "no requests recorded"
    leaking = [u for u in live.requested if patient_id in u or live.study.study_uid in u]
    assert leaking == []
