"""Pixel data: checked before decoding, decoded to float32 with the rescale applied.

Order matters for safety: sizes (Rows x Columns x frames) are checked against the limits and the
transfer syntax against the installed decoders before pydicom touches the pixel bytes, so a
decompression bomb or an undecodable JPEG-LS file fails fast with a clear reason instead of
allocating memory or raising a library error from deep inside a plugin.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.headers import InstanceHeader
from cds.dicom.limits import IngestLimits

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check_frame_size(h: InstanceHeader, limits: IngestLimits) -> None:
    """Reject absurd matrices from the header alone (nothing decoded yet)."""
    rows, cols = h.rows or 0, h.cols or 0
    if rows <= 0 or cols <= 0:
        raise ingest_error(
            IngestKind.UNSUPPORTED_IMAGE, f"series '{h.series_description}' has no image matrix"
        )
    if rows * cols > limits.max_frame_pixels:
        raise ingest_error(
            IngestKind.TOO_LARGE,
            f"image matrix {rows}x{cols} exceeds {limits.max_frame_pixels} pixels per frame",
        )
    if h.frames > limits.max_frames:
        raise ingest_error(IngestKind.TOO_LARGE, f"{h.frames} frames exceed the limit of {limits.max_frames}")
    if h.frames > 1:
        raise ingest_error(
            IngestKind.UNSUPPORTED_IMAGE,
            f"series '{h.series_description}' is multi-frame; single-frame MR is supported",
        )
    if h.samples_per_pixel != 1:
        raise ingest_error(IngestKind.UNSUPPORTED_IMAGE, f"series '{h.series_description}' is not greyscale")


def transfer_syntax_of(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else ImplicitVRLittleEndian


def check_decodable(ds: Dataset) -> None:
    """Fail with the syntax's name when no installed plugin can decode it."""
    uid = transfer_syntax_of(ds)
    if not uid.is_compressed:
        return
    from pydicom.pixels import get_decoder

    name = uid.name if uid.is_valid and uid.name != uid else f"unknown ({uid})"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise ingest_error(
            IngestKind.UNSUPPORTED_TRANSFER_SYNTAX, f"no decoder exists for transfer syntax {name} ({uid})"
        ) from exc
    if not decoder.is_available:
        raise ingest_error(
            IngestKind.UNSUPPORTED_TRANSFER_SYNTAX,
            f"transfer syntax {name} ({uid}) needs a decoder that is not installed (e.g. pylibjpeg or GDCM)",
        )


def decode_frame(
    ds: Dataset, h: InstanceHeader, limits: IngestLimits, out: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """One slice as float32 (rows, cols) in the modality's units (RescaleSlope/Intercept applied).

    `out`, when given, is filled in place (a slice of the volume being built: no extra copy).
    """
    check_frame_size(h, limits)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ingest_error(
            IngestKind.MISSING_PIXEL_DATA, f"an instance of '{h.series_description}' has no pixel data"
        )
    check_decodable(ds)
    uid = transfer_syntax_of(ds)
    if not uid.is_compressed and "PixelData" in ds:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        expected = (h.rows or 0) * (h.cols or 0) * max(bits // 8, 1)
        if bits >= 8 and len(ds.PixelData) < expected:
            raise ingest_error(
                IngestKind.TRUNCATED,
                f"an instance of '{h.series_description}' has {len(ds.PixelData)} of {expected} pixel bytes",
            )
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoder failures on corrupt streams
        raise ingest_error(
            IngestKind.CORRUPT,
            f"pixel data of '{h.series_description}' could not be decoded ({type(exc).__name__})",
        ) from exc
    if raw.shape != (h.rows, h.cols):
        raise ingest_error(IngestKind.UNSUPPORTED_IMAGE, f"unexpected pixel array shape {raw.shape}")
    frame = np.empty_like(raw, dtype=np.float32) if out is None else out
    frame[...] = raw
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        np.subtract(frame.max(), frame, out=frame)  # low values are bright: store one convention
    slope = _number(ds, "RescaleSlope", 1.0)
    intercept = _number(ds, "RescaleIntercept", 0.0)
    if slope != 1.0:
        frame *= np.float32(slope)
    if intercept != 0.0:
        frame += np.float32(intercept)
    return frame


def _number(ds: Dataset, keyword: str, default: float) -> float:
    try:
        value = ds.get(keyword)
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
