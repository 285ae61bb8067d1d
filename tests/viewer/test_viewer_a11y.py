"""Accessibility basics: WCAG contrast of the grade colours and text, labels on every control,
alt text on every image (keyboard use of the toggles is driven in the browser test)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from viewer_support import store_analysis, synthetic_artifacts, viewer_path

from cds.extensions import services

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
STATIC = Path(__file__).resolve().parents[2] / "cds" / "viewer" / "static"


def _channel(c: int) -> float:
    s = c / 255.0
    return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4


def luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(ch * 2 for ch in h)
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_contrast_formula_matches_wcag_reference_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


def _short_hex(colour: str) -> str:
    """'#555555' -> '#555' (a form the CSS may use); other colours have no short form."""
    h = colour[1:]
    return "#" + h[::2] if all(h[i] == h[i + 1] for i in (0, 2, 4)) else colour


def _rule(css: str, selector: str) -> dict[str, str]:
    match = re.search(re.escape(selector) + r"\s*\{([^}]*)\}", css)
    assert match, f"no CSS rule for {selector}"
    return dict(
        (k.strip(), v.strip()) for k, v in (d.split(":", 1) for d in match.group(1).split(";") if ":" in d)
    )


@pytest.mark.parametrize("grade", ["normal", "moderate", "severe", "none"])
def test_grade_colours_reach_aaa_contrast(grade: str) -> None:
    """Grade text on its fill: at least 7:1 (WCAG AAA), so colour never carries the meaning alone
    and the text stays readable for low vision and on poor screens."""
    rule = _rule((TEMPLATES / "base.html").read_text(), f".grade-{grade}")
    assert contrast(rule["color"], rule["background"]) >= 7.0, rule


@pytest.mark.parametrize(
    ("fg", "bg", "where"),
    [
        ("#4a148c", "#ffffff", ".uncertain"),
        ("#555555", "#ffffff", ".note"),
        ("#ffffff", "#0b3d91", ".ai-banner"),
        ("#45556b", "#eef2f7", ".patient-banner .label"),
        ("#611a15", "#fdecea", ".form-error"),
        ("#1e4620", "#ffffff", "agreed feedback"),
        ("#ffffff", "#0b3d91", "primary button"),
        ("#0b3d91", "#f7f9fc", "feedback summary"),
    ],
)
def test_text_colours_reach_aa_contrast(fg: str, bg: str, where: str) -> None:
    css = (TEMPLATES / "base.html").read_text() + (STATIC / "viewer.css").read_text()
    for colour in (fg, bg):  # the pair is really used (long or short hex form)
        assert colour in css or _short_hex(colour) in css, (where, colour)
    assert contrast(fg, bg) >= 4.5, where


class _Controls(HTMLParser):
    """Collects form controls, labels and images of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.images: list[dict[str, str | None]] = []
        self.buttons: list[str] = []
        self._label_depth = 0
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self._label_depth += 1
            if a.get("for"):
                self.label_for.add(str(a["for"]))
        elif tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append({**a, "_wrapped": "1" if self._label_depth else None})
        elif tag == "img":
            self.images.append(a)
        elif tag == "button":
            self._button = [a.get("aria-label") or ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_depth -= 1
        elif tag == "button" and self._button is not None:
            self.buttons.append("".join(self._button).strip())
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)


def test_every_control_has_a_label_and_every_image_an_alt(app: Flask, client: FlaskClient) -> None:
    analysis_id = store_analysis(app)
    synthetic_artifacts(services(app).settings.data_dir, analysis_id)
    html = client.get(viewer_path(app, analysis_id)).get_data(as_text=True)
    page = _Controls()
    page.feed(html)
    assert len(page.controls) > 10
    for control in page.controls:
        labelled = control["_wrapped"] or control.get("aria-label") or control.get("id") in page.label_for
        assert labelled, f"unlabelled control: {control}"
    assert page.images and all(img.get("alt") is not None for img in page.images)
    assert all(img.get("alt") for img in page.images if "overlay" not in (img.get("class") or ""))
    assert page.buttons and all(page.buttons), page.buttons
    assert '<html lang="en">' in html
    assert html.count("<fieldset") >= html.count('class="feedback-form"')  # radio groups have a legend
