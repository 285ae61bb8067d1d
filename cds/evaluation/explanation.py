"""Explanation figures: Grad-CAM faithfulness and rationale verification.

* Faithfulness comes from cds.explain.faithfulness (the Grad-CAM engineer's module): pointing
  game against the synthetic cause regions and the deletion check. It runs its own traced quick
  read per study, so it runs study by study in the evaluation's worker pool (cached like the
  pipeline records) on the first ``n`` evaluated studies, and the per-study reports are merged;
  when the module is not importable the section says so.
* Rationale: cds.explain.evaluation.evaluate_corpus over (a) the fixed 120-case corpus of
  cds.explain.corpus and (b) the finding sets the pipeline actually produced on the test split,
  both with the configured default writer (template) -- the figure that matters for safety is
  ``delivered_failing_verification`` (must be 0). The local language model is too slow to run
  here over a corpus; its last measured figures are quoted from models/rationale-llm/evaluation.json.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any


def faithfulness_available() -> str | None:
    """None when cds.explain.faithfulness can be used, else why not (shown in the report)."""
    try:
        from cds.explain import faithfulness

        faithfulness.evaluate_faithfulness  # noqa: B018  # the entry point must exist
    except Exception as exc:  # ImportError, AttributeError, or a broken optional dependency
        return f"{type(exc).__name__}: {exc}"
    return None


def faithfulness_of_study(data_dir: Path, name: str, models_dir: Path | None) -> bytes:
    """cds.explain.faithfulness on one study, pickled (it runs in a worker process and is cached
    as is, so that the studies' reports can be merged and summarised by the module's own code)."""
    from cds.explain.faithfulness import evaluate_faithfulness

    return pickle.dumps(evaluate_faithfulness(data_dir, studies=[name], models_dir=models_dir))


def merge_reports(reports: Sequence[Any]) -> Any:
    """One report from per-study reports of the same frozen dataclass: counts add, tuples of
    scores concatenate, count mappings add. Generic over the fields, so the Grad-CAM module can
    add figures without this module knowing their names."""
    first = reports[0]
    merged: dict[str, Any] = {}
    for f in fields(first):
        values = [getattr(r, f.name) for r in reports]
        v0 = values[0]
        if is_dataclass(v0) and not isinstance(v0, type):
            merged[f.name] = merge_reports(values)  # e.g. a Rate(hits, n)
            continue
        if isinstance(v0, bool) or not isinstance(v0, int | tuple | Mapping):
            raise TypeError(f"cannot merge field {f.name!r} of type {type(v0).__name__}")
        if isinstance(v0, int):
            merged[f.name] = sum(values)
        elif isinstance(v0, tuple):
            merged[f.name] = tuple(x for v in values for x in v)
        else:
            counts: Counter[Any] = Counter()
            for v in values:
                counts.update(dict(v))
            merged[f.name] = dict(counts)
    return type(first)(**merged)


def faithfulness_section(blobs: Sequence[bytes], studies: Sequence[str]) -> dict[str, Any]:
    """The merged report's own to_json, or why there is none."""
    why = faithfulness_available()
    if why is not None:
        return {"available": False, "reason": why}
    if not blobs:
        return {"available": False, "reason": "no study was scored"}
    try:
        report = merge_reports([pickle.loads(b) for b in blobs])  # our own cache files
        out = dict(report.to_json())
    except Exception as exc:  # a changed report class: say so rather than fail the evaluation
        return {
            "available": False,
            "reason": f"faithfulness reports not mergeable: {type(exc).__name__}: {exc}",
        }
    out["available"] = True
    out["studies"] = list(studies)
    return out


def rationale_section(
    analyses: Sequence[tuple[str, Mapping[str, Any]]], models_dir: Path | None
) -> dict[str, Any]:
    """Verifier figures of the default writer on the fixed corpus and on the pipeline's own
    finding sets, plus the local model's last measured figures (quoted, with their source)."""
    from cds.config import Settings
    from cds.explain.corpus import CorpusCase, generate_corpus
    from cds.explain.evaluation import evaluate_corpus

    settings = Settings(rationale_backend="template")
    corpus_report, _ = evaluate_corpus(generate_corpus(), None, settings)
    cases = [
        CorpusCase(name=name, levels=dict(a.get("levels", {})), heatmaps=None)
        for name, a in analyses
        if a.get("status") == "complete" and a.get("levels")
    ]
    pipeline_report = evaluate_corpus(cases, None, settings)[0].to_json() if cases else None
    out: dict[str, Any] = {
        "writer": "template (the default configured backend; the local model is optional)",
        "corpus": corpus_report.to_json(),
        "pipeline_findings": pipeline_report,
    }
    from cds.ml.spec import DEFAULT_MODELS_DIR

    measured = (models_dir or DEFAULT_MODELS_DIR) / "rationale-llm" / "evaluation.json"
    if measured.is_file():
        try:
            data = json.loads(measured.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
        local = {k: v for k, v in data.items() if k.startswith("local") and isinstance(v, dict)}
        if local:
            out["local_model_measured"] = {
                "source": "models/rationale-llm/evaluation.json",
                "measured": data.get("measured"),
                "command": data.get("command"),
                "runs": {
                    k: {
                        key: v.get(key)
                        for key in (
                            "model_id",
                            "n_cases",
                            "model_draft_pass_rate",
                            "template_fallback_share",
                            "delivered_failing_verification",
                            "rationale_ms_p50",
                        )
                    }
                    for k, v in local.items()
                },
            }
    return out
