"""The whole evaluation: studies -> cached records -> figures -> metrics.json + report.html.

Order of work (each step cached, see cds.evaluation.cache): quick_read records of the synthetic
test studies, SPIDER hold-out Dice, Grad-CAM faithfulness on the first ``explain_n`` studies, and
the rationale verifier; then aggregation, plots, the gallery and the two output files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds.domain import Level
from cds.errors import BadRequest
from cds.evaluation import aggregate as agg
from cds.evaluation import explanation, plots
from cds.evaluation.cache import RecordCache, code_digest, models_key
from cds.evaluation.misses import explain_misses
from cds.evaluation.report import render
from cds.evaluation.targets import anchors, verdicts
from cds.evaluation.truth import StudyTruth, read_truth, study_folders

#: Code whose change invalidates cached study records (see cds.evaluation.cache.code_digest).
PIPELINE_CODE = (
    "cds.pipeline",
    "cds.dicom",
    "cds.ml",
    "cds.domain",
    "cds.evaluation.study",
    "cds.evaluation.recorder",
    "cds.evaluation.truth",
)
GALLERY_SIZE = 3
FAITHFULNESS = "faithfulness"  # cache file prefix of a study's pickled faithfulness scores


@dataclass(frozen=True)
class EvaluationConfig:
    out: Path
    data: Path
    spider: Path | None = None
    n: int | None = None
    workers: int = 1
    models_dir: Path | None = None
    cache_dir: Path | None = None
    explain_n: int | None = None  # faithfulness on the first N studies (None: all, 0: none)
    progress: bool = True
    command: str = "cds evaluate"
    commit: str | None = None  # the code's git commit when run from an exported snapshot
    replay: bool = True  # reuse segmentation outputs of earlier runs (cds.evaluation.replay)

    @property
    def cache_root(self) -> Path:
        return self.cache_dir or (self.out / "cache")


# ----------------------------------------------------------------------------------------------
# models and data provenance
# ----------------------------------------------------------------------------------------------


def pipeline_models() -> tuple[str, ...]:
    """Every model the quick read loads and verifies up front (cds.pipeline.quick_read's
    ``_load_models``), by the stage modules' own names. Their cards make the metrics' "models"
    list and their sha256 the record cache keys, so every model that shapes a record is named in
    EVALUATION.json and a retrained one invalidates cached records (the foraminal model was
    missing from both). tests/evaluation/test_pipeline_models.py fails when the quick read loads
    a model that is not listed here; models named by the records themselves are added to the
    report in any case (:func:`models_used`)."""
    from cds.pipeline import axial, classify, foraminal, sac_refine, segment, subarticular

    return (
        segment.MODEL_NAME,
        axial.MODEL_NAME,
        sac_refine.MODEL_NAME,
        classify.MODEL_NAME,
        foraminal.MODEL_NAME,
        subarticular.MODEL_NAME,
    )


def models_used(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the models the analyses say they used (each record's ``model_versions``)."""
    return sorted({str(name) for r in records for name in dict(r.get("model_versions") or {})})


def model_cards(models_dir: Path | None, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    from cds.ml.spec import read_card

    out = {}
    for name in pipeline_models() if names is None else names:
        spec = read_card(name, models_dir)
        out[name] = {
            "version": spec.version,
            "sha256": spec.sha256,
            "thresholds": dict(spec.thresholds),
            "training": dict(spec.training),
        }
    return out


def _seeds_in(node: Any) -> Iterable[int]:
    """Every integer under a key named 'seeds' anywhere in a card's training block."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == "seeds" and isinstance(v, list):
                yield from (int(s) for s in v if isinstance(s, int))
            else:
                yield from _seeds_in(v)
    elif isinstance(node, list):
        for v in node:
            yield from _seeds_in(v)


def _folders_in(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k in ("folder", "folders", "data_dir", "data_root") and isinstance(v, str):
                yield v
            elif k in ("folders",) and isinstance(v, list):
                yield from (str(x) for x in v)
            else:
                yield from _folders_in(v)
    elif isinstance(node, list):
        for v in node:
            yield from _folders_in(v)


def seed_overlap(truths: Sequence[StudyTruth], cards: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Test study seeds that also appear in a training set a model card names (by seed list, or
    by a data folder that still exists on this machine)."""
    test_seeds = {t.seed for t in truths if t.seed is not None}
    sources, unchecked = [], []
    training: set[int] = set()
    for name, card in cards.items():
        listed = set(_seeds_in(card.get("training", {})))
        if listed:
            training |= listed
            sources.append(f"{name} card: {len(listed)} seeds")
        for folder in sorted(set(_folders_in(card.get("training", {})))):
            path = Path(folder)
            if path.is_dir():
                found = {read_truth(p).seed for p in study_folders(path)}
                seeds = {s for s in found if s is not None}
                training |= seeds
                sources.append(f"{name}: {folder} ({len(seeds)} studies)")
            elif not listed:
                unchecked.append(f"{name}: {folder} (folder gone, no seed list in the card)")
    return {
        "checked": bool(sources),
        "reason": None if sources else "no model card lists training seeds or an existing data folder",
        "sources": sources,
        "unchecked": unchecked,
        "overlapping": sorted(test_seeds & training),
    }


# ----------------------------------------------------------------------------------------------
# per-study records
# ----------------------------------------------------------------------------------------------


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


@dataclass(frozen=True)
class Job:
    """One study for a worker: its quick_read record, traced for faithfulness when asked."""

    name: str
    folder: str
    models_dir: str | None
    overlay_dir: str
    faithfulness: bool
    replay_dir: str | None


def _run_job(job: Job) -> tuple[Job, Any]:
    from cds.evaluation.study import evaluate_study

    models_dir = Path(job.models_dir) if job.models_dir else None
    replay_dir = Path(job.replay_dir) if job.replay_dir else None
    return job, evaluate_study(
        Path(job.folder), models_dir, Path(job.overlay_dir), job.faithfulness, replay_dir
    )


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="job", disable=not enabled)


def run_jobs(
    truths: Sequence[StudyTruth],
    explain: Sequence[str],
    cfg: EvaluationConfig,
    cache: RecordCache,
    explain_cache: RecordCache,
    replay: str | None = None,
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Every study's record and the faithfulness report of the ``explain`` studies, from the
    cache where present, else computed (in ``cfg.workers`` processes) and cached as they finish."""
    records: dict[str, dict[str, Any]] = {}
    blobs: dict[str, bytes] = {}
    wanted = set(explain)
    jobs: list[Job] = []
    for t in truths:
        got = cache.get(t.name, t.digest)
        blob = explain_cache.get_bytes(f"{FAITHFULNESS}_{t.name}") if t.name in wanted else None
        if got is not None:
            records[t.name] = got
        if blob is not None:
            blobs[t.name] = blob
        if got is None or (t.name in wanted and blob is None):
            jobs.append(
                Job(
                    t.name, str(t.folder), _opt(cfg.models_dir), str(cache.overlays), t.name in wanted, replay
                )
            )

    def keep(job: Job, result: Any) -> None:
        cache.put(job.name, result.record)
        records[job.name] = result.record
        if result.faithfulness is not None:
            explain_cache.put_bytes(f"{FAITHFULNESS}_{job.name}", result.faithfulness)
            blobs[job.name] = result.faithfulness

    bar = _bar(len(truths), "evaluate studies", cfg.progress)
    bar.update(len(truths) - len(jobs))
    if cfg.workers <= 1:
        _init_worker()
        for job in jobs:
            bar.set_postfix_str(job.name)
            keep(*_run_job(job))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=cfg.workers, initializer=_init_worker) as pool:
            for future in as_completed([pool.submit(_run_job, job) for job in jobs]):
                job, result = future.result()
                keep(job, result)
                bar.set_postfix_str(job.name)
                bar.update(1)
    bar.close()
    return [records[t.name] for t in truths], [blobs[n] for n in explain if n in blobs]


def _opt(path: Path | None) -> str | None:
    return str(path) if path is not None else None


# ----------------------------------------------------------------------------------------------
# SPIDER
# ----------------------------------------------------------------------------------------------


def spider_section(
    cfg: EvaluationConfig, cards: Mapping[str, Mapping[str, Any]], cache: RecordCache
) -> tuple[dict[str, Any] | None, str | None]:
    from cds.evaluation.spider import evaluate_spider, held_out_patients

    if cfg.spider is None:
        return None, "no --spider folder given"
    if not cfg.spider.is_dir():
        return None, f"SPIDER folder not found: {cfg.spider}"
    patients = held_out_patients(dict(cards["sagittal_seg"].get("training", {})))
    if not patients:
        return None, "the sagittal model card lists no held-out SPIDER patients"
    cached = cache.get("spider")
    if cached is not None and cached.get("requested") == patients:
        return cached, None
    result = evaluate_spider(cfg.spider, patients, cfg.models_dir, cache.overlays)
    result["requested"] = patients
    cache.put("spider", result)
    return result, None


# ----------------------------------------------------------------------------------------------
# gallery
# ----------------------------------------------------------------------------------------------


def _copy(src_dir: Path, name: str, out: Path, new_name: str) -> str | None:
    src = src_dir / name
    if not src.is_file():
        return None
    shutil.copyfile(src, out / new_name)
    return new_name


def gallery(
    records: Sequence[Mapping[str, Any]],
    spider: Mapping[str, Any] | None,
    overlay_dirs: tuple[Path, Path],
    out: Path,
) -> list[dict[str, Any]]:
    study_dir, spider_dir = overlay_dirs
    sections: list[dict[str, Any]] = []
    scored = [
        (d, r)
        for r in records
        if (d := agg.study_mean_dice(r)) is not None and (r.get("overlays") or {}).get("sagittal")
    ]
    scored.sort(key=lambda x: x[0])
    for title, chosen in (
        ("Sagittal: lowest mean Dice (synthetic)", scored[:GALLERY_SIZE]),
        ("Sagittal: highest mean Dice (synthetic)", scored[::-1][:GALLERY_SIZE]),
    ):
        cases = []
        for d, r in chosen:
            li = r.get("level_identification") or {}
            per = {k: agg.dice_of(v) for k, v in dict(r.get("sagittal_overlap") or {}).items()}
            name = _copy(study_dir, r["overlays"]["sagittal"], out, f"gallery_{r['study']}_sagittal.png")
            if name:
                detail = ", ".join(f"{k} {v:.2f}" for k, v in per.items() if v is not None)
                cases.append(
                    {
                        "image": name,
                        "caption": f"{r['study']}: mean Dice {d:.3f} ({detail}); levels identified "
                        f"{len(li.get('correct', []))}/{len(Level)}",
                    }
                )
        sections.append({"title": title, "cases": cases})
    mislabelled = [
        r
        for r in records
        if (r.get("overlays") or {}).get("sagittal")
        and len((r.get("level_identification") or {}).get("correct", [])) < len(Level)
    ]
    cases = []
    for r in mislabelled[:GALLERY_SIZE]:
        li = r.get("level_identification") or {}
        said = ", ".join(f"{k} on {v or 'no lumbar disc'}" for k, v in dict(li.get("found", {})).items())
        name = _copy(study_dir, r["overlays"]["sagittal"], out, f"gallery_{r['study']}_sagittal.png")
        if name:
            flag = "flagged uncertain" if li.get("uncertain") else "NOT flagged uncertain"
            cases.append(
                {
                    "image": name,
                    "caption": f"{r['study']}: pipeline level -> true disc: {said or 'none'} ({flag})",
                }
            )
    if cases:
        sections.append(
            {
                "title": f"Level naming errors (first {len(cases)} of {len(mislabelled)} studies)",
                "cases": cases,
            }
        )
    axial = []
    for r in records:
        files = dict((r.get("overlays") or {}).get("axial") or {})
        for level, lv in dict(r.get("levels") or {}).items():
            dsca = (lv.get("measurements") or {}).get("dsca_mm2") or {}
            if level in files and dsca.get("truth") is not None and dsca.get("predicted") is not None:
                canal = (lv.get("conditions") or {}).get("spinal_canal") or {}
                axial.append(
                    (abs(dsca["predicted"] - dsca["truth"]), r["study"], level, dsca, canal, files[level])
                )
    axial.sort(key=lambda x: x[0])
    for title, chosen_ax in (
        ("Axial: largest dural sac area error", axial[::-1][:GALLERY_SIZE]),
        ("Axial: smallest dural sac area error", axial[:GALLERY_SIZE]),
    ):
        cases = []
        for err, study, level, dsca, canal, file in chosen_ax:
            name = _copy(study_dir, file, out, f"gallery_{study}_{level}_axial.png")
            if name:
                cases.append(
                    {
                        "image": name,
                        "caption": f"{study} {level} (level as the pipeline named it): DSCA truth "
                        f"{dsca['truth']:.1f} mm2, pipeline {dsca['predicted']:.1f} mm2 (error {err:.1f}); "
                        f"canal truth {canal.get('truth')}, reported {canal.get('grade')}",
                    }
                )
        sections.append({"title": title, "cases": cases})
    if spider and spider.get("per_patient"):
        means = {
            p: sum(v for v in d.values() if v is not None) / max(1, sum(v is not None for v in d.values()))
            for p, d in spider["per_patient"].items()
        }
        order = sorted(means, key=lambda p: means[p])
        cases = []
        for label, p in (("worst", order[0]), ("best", order[-1])):
            name = _copy(spider_dir, spider["overlays"].get(p, ""), out, f"gallery_spider_{p}.png")
            if name:
                cases.append(
                    {"image": name, "caption": f"SPIDER patient {p} ({label}): mean Dice {means[p]:.3f}"}
                )
        sections.append({"title": "Real SPIDER hold-out: worst and best patient", "cases": cases})
    return sections


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


def _replay_note(records: Sequence[Mapping[str, Any]]) -> str:
    hits = sum(int((r.get("replay") or {}).get("hits", 0)) for r in records)
    computed = sum(int((r.get("replay") or {}).get("computed", 0)) for r in records)
    return (
        f"{hits} segmentation calls replayed from an earlier run with the same U-Net weights, {computed} "
        "computed (cds.evaluation.replay; all later stages ran live)"
    )


def _git_head() -> str | None:
    """The commit of the checkout this code runs from, when it is a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_evaluation(cfg: EvaluationConfig) -> dict[str, Any]:
    """Evaluate and write cfg.out/metrics.json and cfg.out/report.html; returns the metrics."""
    start = time.perf_counter()
    load_start = _load()
    cfg.out.mkdir(parents=True, exist_ok=True)
    cards = model_cards(cfg.models_dir)
    shas = {k: str(v["sha256"]) for k, v in cards.items()}
    folders = study_folders(cfg.data)
    if not folders:
        raise BadRequest(f"no generated studies under {cfg.data}")
    chosen = folders[: cfg.n] if cfg.n else folders
    truths = [read_truth(f) for f in chosen]
    # Import the pipeline before hashing its code and before forking workers, so that every
    # worker runs the code the cache key describes even if files change during the run.
    # (These modules import torch lazily, so the parent stays torch-free until the workers exist.)
    import cds.dicom
    import cds.evaluation.study
    import cds.pipeline.classify
    import cds.pipeline.levels
    import cds.pipeline.quick_read
    import cds.pipeline.segment  # noqa: F401

    pipeline_code = code_digest(*PIPELINE_CODE)
    pipeline_cache = RecordCache(cfg.cache_root, models_key(shas, list(cards), pipeline_code))
    explain_code = pipeline_code + code_digest("cds.explain")
    explain_cache = RecordCache(cfg.cache_root, models_key(shas, list(cards), explain_code))
    explain = [t.name for t in (truths if cfg.explain_n is None else truths[: cfg.explain_n])]
    if explanation.faithfulness_available() is not None:
        explain = []
    replay_dir = None
    if cfg.replay:
        from cds.evaluation.replay import replay_key

        replay_dir = str(cfg.cache_root / "replay" / replay_key(shas))
    records, blobs = run_jobs(truths, explain, cfg, pipeline_cache, explain_cache, replay_dir)
    cards.update(model_cards(cfg.models_dir, [m for m in models_used(records) if m not in cards]))

    spider_code = code_digest("cds.pipeline.segment", "cds.ml", "cds.evaluation.spider")
    spider_cache = RecordCache(cfg.cache_root, models_key(shas, ("sagittal_seg",), spider_code))
    spider, spider_reason = spider_section(cfg, cards, spider_cache)

    threshold = float(cards["classifier"]["thresholds"].get("present", 0.5))
    pairs = agg.finding_pairs(records)
    n_studies = len(records)
    if cfg.explain_n != 0:
        faith = explanation.faithfulness_section(blobs, explain)
    else:
        faith = {"available": False, "reason": "skipped (--explain-n 0)"}
    rationale = explanation.rationale_section(
        [(str(r["study"]), r["analysis"]) for r in records if r.get("analysis")], cfg.models_dir
    )
    seeds = [t.seed for t in truths if t.seed is not None]
    metrics: dict[str, Any] = {
        "schema": "cds-evaluation-1",
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cfg.command,
        "models": {k: {"version": v["version"], "sha256": v["sha256"]} for k, v in cards.items()},
        "code": {
            "commit": cfg.commit or _git_head(),
            "pipeline_code_digest": pipeline_code,
            "segmentation_replay": _replay_note(records) if cfg.replay else "off",
        },
        "data": {
            "folder": str(cfg.data),
            "n_studies": len(truths),
            "n_available": len(folders),
            "generator_versions": sorted({str(t.generator_version) for t in truths}),
            "seed_min": min(seeds) if seeds else None,
            "seed_max": max(seeds) if seeds else None,
            "overlap": seed_overlap(truths, cards),
        },
        "threshold": threshold,
        "conventions": agg.conventions(),
        "coverage": agg.coverage_section(records),
        "segmentation": {
            "synthetic_sagittal": agg.dice_section(records, "sagittal_overlap"),
            "synthetic_axial": agg.dice_section(records, "axial_overlap"),
            "spider": None
            if spider is None
            else {k: spider[k] for k in ("patients", "missing_patients", "per_patient", "summary")},
            "spider_reason": spider_reason,
        },
        "levels": agg.level_section(records),
        "classification": agg.classification_section(pairs, threshold, n_studies),
        "severity": agg.severity_section(pairs, records, n_studies),
        "measurements": agg.measurement_section(records),
        "explanation": {"faithfulness": faith, "rationale": rationale},
        "speed": agg.speed_section(records),
        "per_study": [
            {
                "study": r["study"],
                "status": r.get("status"),
                "sagittal_mean_dice": None if (d := agg.study_mean_dice(r)) is None else round(d, 4),
                "levels_identified": len((r.get("level_identification") or {}).get("correct", [])),
            }
            for r in records
        ],
    }
    metrics["targets"] = verdicts(metrics)
    metrics["anchors"] = anchors(metrics)
    metrics["misses"] = explain_misses(metrics, metrics["targets"])
    metrics["plots"] = _plots(records, pairs, metrics, threshold, cfg.out)
    metrics["gallery"] = gallery(records, spider, (pipeline_cache.overlays, spider_cache.overlays), cfg.out)
    metrics["runtime_s"] = round(time.perf_counter() - start, 1)
    metrics["machine"] = {"cpus": os.cpu_count(), "load_start": load_start, "load_end": _load()}
    (cfg.out / "metrics.json").write_text(
        json.dumps(metrics, indent=1, sort_keys=False) + "\n", encoding="utf-8"
    )
    (cfg.out / "report.html").write_text(render(metrics), encoding="utf-8")
    return metrics


def _plots(
    records: Sequence[Mapping[str, Any]],
    pairs: Mapping[Any, Sequence[agg.Pair]],
    metrics: Mapping[str, Any],
    threshold: float,
    out: Path,
) -> dict[str, Any]:
    def per_study(key: str) -> dict[str, list[float]]:
        values: dict[str, list[float]] = {}
        for r in records:
            for name, counts in dict(r.get(key) or {}).items():
                d = agg.dice_of(counts)
                if d is not None:
                    values.setdefault(name, []).append(d)
        return values

    return {
        "roc": plots.roc_plot(pairs, threshold, out / "roc.png"),
        "calibration": plots.calibration_plot(metrics["classification"], out / "calibration.png"),
        "confusion": plots.confusion_plot(metrics["severity"], out / "confusion.png"),
        "measurements": plots.measurement_plot(agg.measurement_pairs(records), out / "measurements.png"),
        "dice": [
            plots.dice_plot(
                per_study("sagittal_overlap"), "Synthetic sagittal Dice per study", out / "dice_sagittal.png"
            ),
            plots.dice_plot(
                per_study("axial_overlap"), "Synthetic axial Dice per study", out / "dice_axial.png"
            ),
        ],
    }
