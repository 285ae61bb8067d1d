"""Per-study result cache, keyed by the models that produced the result.

Why: a full evaluation runs quick_read on hundreds of studies on a shared CPU. Results live under
``<cache root>/<key>/<study>.json`` where ``key`` hashes the sha256 of every model the section
depends on plus :data:`SCHEMA`, so

* an interrupted run resumes where it stopped (finished studies are files already),
* a change of the code that produced a record (the pipeline, ingestion, the record itself)
  changes the key too (:func:`code_digest`),
* a changed model changes the key and only the sections that depend on it are recomputed
  (quick_read records depend on all three pipeline models; SPIDER Dice only on sagittal_seg),
* a regenerated study (different truth digest) is recomputed even under the same key.

Writes go to a temporary file renamed into place, so a killed run never leaves half a record
and two runs can share a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bumped whenever a record's content or meaning changes (old records are then ignored).
SCHEMA = "study-record-1"


def models_key(shas: Mapping[str, str], names: Sequence[str], code: str = "", schema: str = SCHEMA) -> str:
    """Short stable key of the named models' sha256 (sorted by name), the code digest and the
    record schema."""
    text = schema + "|" + code + "|" + "|".join(f"{n}={shas[n]}" for n in sorted(names))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_digest(*packages: str) -> str:
    """sha256 over the Python sources of the named packages (sorted by path): a pipeline code
    change (level labelling, measurements) must invalidate records made by the old code, since
    the evaluation has to measure what ships, not only which weights ship."""
    import importlib.util

    digest = hashlib.sha256()
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for f in files:
            digest.update(str(f.relative_to(origin.parent.parent)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class RecordCache:
    root: Path
    key: str

    @property
    def folder(self) -> Path:
        return self.root / self.key

    @property
    def overlays(self) -> Path:
        return self.folder / "overlays"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str, digest: str | None = None) -> dict[str, Any] | None:
        """The cached record, or None when absent, unreadable or made from other truth."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        if digest is not None and data.get("truth_digest") != digest:
            return None
        return data

    def put(self, name: str, record: Mapping[str, Any]) -> Path:
        return self._write(self.path(name), json.dumps(record, sort_keys=True).encode("utf-8"))

    def get_bytes(self, name: str) -> bytes | None:
        path = self.folder / f"{name}.bin"
        return path.read_bytes() if path.is_file() else None

    def put_bytes(self, name: str, data: bytes) -> Path:
        return self._write(self.folder / f"{name}.bin", data)

    @staticmethod
    def _write(path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path
