"""Clinician feedback from the viewer: agree or disagree with one finding or with the whole card.

Why a table of its own (``viewer_feedback``) next to the CDS Hooks ``feedback`` table: CDS Hooks
feedback is per card and per outcome (accepted / overridden) and comes from the EHR; the viewer
collects a finer verdict per finding, with a reason from a fixed list (so it can be counted) and
a free comment. A card-level verdict made from a link that named its card carries that card's
uuid, which joins it to the EHR's feedback on the same card.

The ``?card=`` uuid in a link is only a claim: anyone holding one viewer link could type in the uuid
of another patient's card and so attach a verdict to (and read the EHR feedback of) that card. So the
uuid is trusted only when this deployment issued it (cds.signing.CardIdSigner) AND a recorded hook
call about this analysis's patient returned it (hook_calls.card_uuids); otherwise the verdict is
still stored, just not linked to any card (linked_card_uuid).

Input is validated here (boundary): unknown targets, verdicts or reasons, a disagreement without
a reason, over-long comments and malformed card uuids are FeedbackInvalid with a message a
clinician can act on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cds.domain import Condition, FeedbackVerdict, Level
from cds.errors import BadRequest
from cds.signing import CardIdSigner
from cds.store.records import FeedbackRecord, HookCallRecord, IssuedCardRecord, ViewerFeedbackRecord

CARD_TARGET = "card"
MAX_COMMENT_CHARS = 1000
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class DisagreeReason(StrEnum):
    """Why a clinician disagrees; a fixed list so disagreements can be counted per reason."""

    GRADE_TOO_HIGH = "grade_too_high"
    GRADE_TOO_LOW = "grade_too_low"
    WRONG_LEVEL = "wrong_level"
    MEASUREMENT_WRONG = "measurement_wrong"
    SEGMENTATION_WRONG = "segmentation_wrong"
    IMAGE_QUALITY = "image_quality"
    OTHER = "other"

    @property
    def display(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    DisagreeReason.GRADE_TOO_HIGH: "Grade too high (overcalled)",
    DisagreeReason.GRADE_TOO_LOW: "Grade too low (missed or undercalled)",
    DisagreeReason.WRONG_LEVEL: "Wrong level (level labelling)",
    DisagreeReason.MEASUREMENT_WRONG: "Measurement wrong",
    DisagreeReason.SEGMENTATION_WRONG: "Outline / segmentation wrong",
    DisagreeReason.IMAGE_QUALITY: "Images not adequate to judge",
    DisagreeReason.OTHER: "Other (please comment)",
}


class FeedbackInvalid(BadRequest):
    """The submitted feedback cannot be stored as it is; the message says what to change."""


@dataclass(frozen=True)
class Target:
    """What the verdict is about: one finding (level + condition) or the whole card."""

    level: Level | None = None
    condition: Condition | None = None

    @property
    def key(self) -> str:
        if self.level is None or self.condition is None:
            return CARD_TARGET
        return f"{self.level.value}/{self.condition.value}"

    @property
    def anchor(self) -> str:
        """HTML id fragment (letters, digits, '-', '_' only)."""
        return "fb-" + self.key.replace("/", "_")

    @classmethod
    def parse(cls, text: str) -> Target:
        if text == CARD_TARGET:
            return cls()
        level, _, condition = text.partition("/")
        try:
            return cls(Level(level), Condition(condition))
        except ValueError as exc:
            raise FeedbackInvalid("unknown finding") from exc


@dataclass(frozen=True)
class FeedbackInput:
    target: Target
    verdict: FeedbackVerdict
    reason: DisagreeReason | None
    comment: str | None
    card_uuid: str | None


def _clean_comment(raw: str) -> str | None:
    text = unicodedata.normalize("NFC", raw.replace("\r\n", "\n"))
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C").strip()
    if len(text) > MAX_COMMENT_CHARS:
        raise FeedbackInvalid(
            f"The comment is too long ({len(text)} characters; at most {MAX_COMMENT_CHARS})."
        )
    return text or None


def parse_form(form: Mapping[str, str], allowed: set[str]) -> FeedbackInput:
    """Validate a submitted feedback form; ``allowed`` are the target keys of this analysis."""
    target = Target.parse(str(form.get("target", "")))
    if target.key not in allowed:
        raise FeedbackInvalid("This finding is not part of the analysis.")
    try:
        verdict = FeedbackVerdict(str(form.get("verdict", "")))
    except ValueError as exc:
        raise FeedbackInvalid("Choose 'Agree' or 'Disagree'.") from exc
    raw_reason = str(form.get("reason", "") or "")
    reason = None
    if raw_reason:
        try:
            reason = DisagreeReason(raw_reason)
        except ValueError as exc:
            raise FeedbackInvalid("Choose a reason from the list.") from exc
    comment = _clean_comment(str(form.get("comment", "") or ""))
    if verdict is FeedbackVerdict.DISAGREE and reason is None:
        raise FeedbackInvalid("Please choose a reason for disagreeing.")
    if reason is DisagreeReason.OTHER and not comment:
        raise FeedbackInvalid("Please say in the comment why you disagree ('Other').")
    if verdict is FeedbackVerdict.AGREE:
        reason = None
    card = str(form.get("card", "") or "") or None
    if card is not None and not _UUID.match(card):
        raise FeedbackInvalid("The card reference is malformed; reopen the card from the EHR.")
    if target.key != CARD_TARGET:
        card = None
    return FeedbackInput(target, verdict, reason, comment, card.lower() if card else None)


@dataclass(frozen=True)
class ShownFeedback:
    """The latest verdict on one target, as the page shows it back."""

    target: str
    verdict: FeedbackVerdict
    reason: DisagreeReason | None
    comment: str | None
    created_at: datetime
    earlier: int  # how many earlier verdicts on the same target

    @property
    def summary(self) -> str:
        text = "You agreed" if self.verdict is FeedbackVerdict.AGREE else "You disagreed"
        if self.reason is not None:
            text += f": {self.reason.display}"
        return text


@dataclass(frozen=True)
class CardFeedback:
    """The EHR's CDS Hooks feedback on the card the viewer was opened from."""

    outcome: str
    reason: str | None
    comment: str | None


def save(session: Session, analysis_id: str, item: FeedbackInput) -> ViewerFeedbackRecord:
    record = ViewerFeedbackRecord(
        analysis_id=analysis_id,
        target=item.target.key,
        level=item.target.level,
        condition=item.target.condition,
        verdict=item.verdict,
        reason=item.reason.value if item.reason else None,
        comment=item.comment,
        card_uuid=item.card_uuid,
    )
    session.add(record)
    session.flush()
    return record


def latest(session: Session, analysis_id: str) -> dict[str, ShownFeedback]:
    rows = session.scalars(
        sa.select(ViewerFeedbackRecord)
        .where(ViewerFeedbackRecord.analysis_id == analysis_id)
        .order_by(ViewerFeedbackRecord.created_at, ViewerFeedbackRecord.id)
    ).all()
    out: dict[str, ShownFeedback] = {}
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.target] = counts.get(row.target, 0) + 1
        reason = None
        if row.reason:
            try:
                reason = DisagreeReason(row.reason)
            except ValueError:  # a reason retired from the list: keep showing the verdict
                reason = DisagreeReason.OTHER
        out[row.target] = ShownFeedback(
            row.target, row.verdict, reason, row.comment, row.created_at, counts[row.target] - 1
        )
    return out


def card_feedback(session: Session, card_uuid: str | None) -> tuple[CardFeedback, ...]:
    """The CDS Hooks feedback records of one card (joined by its uuid)."""
    if not card_uuid:
        return ()
    rows = session.scalars(
        sa.select(FeedbackRecord).where(FeedbackRecord.card_uuid == card_uuid).order_by(FeedbackRecord.id)
    ).all()
    return tuple(
        CardFeedback(
            outcome=row.outcome.value,
            reason=row.override_reason_display or row.override_reason_code,
            comment=row.user_comment,
        )
        for row in rows
    )


def valid_card_uuid(value: str | None) -> str | None:
    """The ``?card=`` query value when it is a well-formed uuid, else None (ignored, not an error)."""
    if value and _UUID.match(value):
        return value.lower()
    return None


def linked_card_uuid(
    session: Session, card_uuid: str | None, patient_ref: str | None, card_ids: CardIdSigner
) -> str | None:
    """``card_uuid`` if it may join this analysis's feedback to the EHR's, else None.

    It may when a hook call about the study's patient (``patient_ref``, see _same_patient) returned
    it and its tag proves this deployment issued it for that call's service; a foreign, forged or
    other patient's uuid is not linked.
    """
    if not card_uuid or not patient_ref:
        return None
    # issued_cards is keyed by the uuid (filled by a trigger wherever hook_calls.card_uuids is
    # written, migration 0008): one index lookup instead of a LIKE scan of every audit row.
    row = session.execute(
        sa.select(HookCallRecord.service_id, HookCallRecord.patient_ref)
        .join(IssuedCardRecord, IssuedCardRecord.hook_call_id == HookCallRecord.id)
        .where(IssuedCardRecord.card_uuid == card_uuid)
    ).first()
    if row is None:
        return None
    service_id, call_patient = row
    if _same_patient(patient_ref, call_patient) and card_ids.issued(card_uuid, service_id):
        return card_uuid
    return None


def _same_patient(study_patient: str, call_patient: str | None) -> bool:
    """Whether a hook call's patient ("Patient/<id>") is the study's stored patient.

    The study holds either a FHIR reference (relative or absolute) from an EHR registration or the
    DICOM PatientID from PACS intake; the latter matches only when it equals the FHIR id. When in
    doubt the answer is no: the verdict is then stored unlinked, never linked to a stranger's card.
    """
    if not call_patient:
        return False
    return (
        study_patient == call_patient
        or study_patient.endswith("/" + call_patient)
        or ("/" not in study_patient and call_patient == f"Patient/{study_patient}")
    )
