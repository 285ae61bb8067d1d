"""Handle on the test Orthanc started by conftest.py (kept apart so tests can import the type)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass(frozen=True)
class OrthancServer:
    base_url: str  # http://127.0.0.1:PORT
    username: str
    password: str

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def upload(self, path: Path) -> None:
        response = requests.post(
            f"{self.base_url}/instances",
            data=path.read_bytes(),
            auth=(self.username, self.password),
            timeout=10,
        )
        response.raise_for_status()

    def clear(self) -> None:
        auth = (self.username, self.password)
        for study in requests.get(f"{self.base_url}/studies", auth=auth, timeout=10).json():
            requests.delete(f"{self.base_url}/studies/{study}", auth=auth, timeout=10).raise_for_status()
