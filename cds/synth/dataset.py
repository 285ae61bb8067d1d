"""A data set of N synthetic studies with a patient-level train/validation/test split.

Each study is one synthetic patient, so splitting studies is splitting patients. Study i uses seed
``seed * 100003 + i`` (stable when N grows: the first studies of a bigger set are the same studies).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cds.domain import Condition, Grade
from cds.errors import BadRequest


@dataclass(frozen=True)
class Split:
    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15

    @classmethod
    def parse(cls, text: str) -> Split:
        try:
            parts = [float(x) for x in text.split(",")]
        except ValueError as exc:
            raise BadRequest(f"split must be three comma-separated fractions, got {text!r}") from exc
        if len(parts) != 3 or any(p < 0 for p in parts) or not 0.99 <= sum(parts) <= 1.01:
            raise BadRequest(f"split must be three non-negative fractions summing to 1, got {text!r}")
        return cls(*parts)


def study_seed(seed: int, index: int) -> int:
    return seed * 100003 + index


def _one(args: tuple[int, str]) -> str:
    from cds.synth.study import generate_study

    s, out = args
    return generate_study(s, Path(out)).name


def assign_split(names: Sequence[str], split: Split, seed: int) -> dict[str, list[str]]:
    order = list(names)
    np.random.default_rng([seed, 17]).shuffle(order)
    n = len(order)
    n_train = round(split.train * n)
    n_val = round(split.validation * n)
    return {
        "train": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def grade_histogram(out_dir: Path, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts of each grade per condition over the given studies (from their findings.json)."""
    counts: dict[str, Counter[str]] = {c.value: Counter() for c in Condition}
    for name in names:
        data = json.loads((out_dir / name / "truth" / "findings.json").read_text())
        for conds in data["levels"].values():
            for cond, f in conds.items():
                counts[cond][f["grade"]] += 1
    return {c: {g.value: counts[c][g.value] for g in Grade} for c in counts}


def generate_dataset(
    out_dir: Path, n: int, seed: int, split: Split, workers: int = 1, progress: bool = True
) -> dict[str, list[str]]:
    if n < 1:
        raise BadRequest("n must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(study_seed(seed, i), str(out_dir)) for i in range(n)]
    from tqdm import tqdm

    bar = tqdm(total=n, desc="synth studies", unit="study", disable=not progress)
    names: list[str] = []
    if workers <= 1:
        for job in jobs:
            names.append(_one(job))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for name in pool.map(_one, jobs):
                names.append(name)
                bar.update(1)
    bar.close()
    parts = assign_split(names, split, seed)
    (out_dir / "split.json").write_text(json.dumps(parts, indent=1))
    return parts
