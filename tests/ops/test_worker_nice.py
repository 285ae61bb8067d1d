"""`cds worker` runs analyses at a lower CPU priority (CDS_WORKER_NICE, default +10), so that where
it shares CPUs with the web tier, hook requests are scheduled first. A real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cds.config import Settings, SettingsError
from cds.store.migrate import upgrade

CDS = Path(sys.executable).with_name("cds")


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def worker_nice(tmp_path: Path, expected: int, **env: str) -> int:
    """The nice value of a running `cds worker` once it is `expected` (or after 60 s)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'cds.db'}"
    upgrade(url)
    full = {**os.environ, "CDS_DATABASE_URL": url, "CDS_DATA_DIR": str(tmp_path), "CDS_JOBS_BACKEND": "local",
            "CDS_LOG_FORMAT": "text", **env}  # fmt: skip
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(CDS), "worker"], env=full, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (seen := nice_of(proc.pid)) != expected and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)  # and it stays so while the worker runs
        assert proc.poll() is None, log.read_text()[-2000:]
        return nice_of(proc.pid) if seen == expected else seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.integration
def test_the_worker_lowers_its_priority_by_the_setting(tmp_path: Path) -> None:
    expected = min(19, os.nice(0) + 7)
    assert worker_nice(tmp_path / "a", expected, CDS_WORKER_NICE="7") == expected


def test_the_setting_defaults_to_ten_and_is_checked() -> None:
    assert Settings().worker_nice == 10
    assert Settings.from_env({"CDS_WORKER_NICE": "0"}).worker_nice == 0
    for bad in ("-1", "20", "low"):
        with pytest.raises(SettingsError):
            Settings.from_env({"CDS_WORKER_NICE": bad})
