"""Size limits that every source and decoder checks before allocating memory.

Why: DICOM headers and zip directories are attacker-controlled input. Rows x Columns x frames is
checked before any pixel data is decoded, and archive sizes before any member is inflated, so a
crafted file cannot make a worker allocate gigabytes (decompression bombs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestLimits:
    max_instances: int = 5_000  # instances per study (a lumbar MRI has a few hundred at most)
    max_file_bytes: int = 256 * 1024 * 1024  # one DICOM file / zip member
    max_total_bytes: int = 4 * 1024 * 1024 * 1024  # all files / all zip members, uncompressed
    max_frame_pixels: int = 4096 * 4096  # Rows x Columns
    max_frames: int = 2_000  # NumberOfFrames of one instance
    max_series_voxels: int = 256 * 1024 * 1024  # slices x rows x cols of one decoded volume (1 GiB float32)
    max_zip_entries: int = 20_000
    max_zip_ratio: float = 400.0  # uncompressed / compressed size of one member


DEFAULT_LIMITS = IngestLimits()
