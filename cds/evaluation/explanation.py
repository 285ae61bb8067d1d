"""Explanation figures: Grad-CAM faithfulness and rationale verification.

* Faithfulness comes from cds.explain.faithfulness (the Grad-CAM engineer's module): pointing
  game against the synthetic cause regions and the deletion check. The study's single quick read
  runs through cds.explain.gradcam_inputs.traced_quick_read with the evaluation's recording
  stages, so Grad-CAM reuses that read (no second quick read); each study's ``StudyScores`` is
  pickled and cached beside its record, and the module's own ``aggregate`` summarises them.
  When the module is not importable the section says so.
* Rationale: cds.explain.evaluation.evaluate_corpus over (a) the fixed 120-case corpus of
  cds.explain.corpus and (b) the finding sets the pipeline actually produced on the test split,
  both with the configured default writer (template) -- the figure that matters for safety is
  ``delivered_failing_verification`` (must be 0). The local language model is an optional install
  (models/rationale-llm); its measured figures (bench/rationale_bench.py over the same corpus) are
  quoted from models/rationale-llm/evaluation.json.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cds.dicom.study import Study
    from cds.domain import AnalysisResult
    from cds.pipeline.quick_read import Stages


def faithfulness_available() -> str | None:
    """None when the traced faithfulness path can be used, else why not (shown in the report)."""
    try:
        from cds.explain import faithfulness, gradcam_inputs

        faithfulness.score_traced  # noqa: B018  # the entry points must exist
        faithfulness.aggregate  # noqa: B018
        gradcam_inputs.traced_quick_read  # noqa: B018
    except Exception as exc:  # ImportError, AttributeError, or a broken optional dependency
        return f"{type(exc).__name__}: {exc}"
    return None


def traced_read_and_score(
    study_dir: Path, study: Study, stages: Stages, models_dir: Path | None, seed: int
) -> tuple[AnalysisResult, bytes]:
    """quick_read through ``stages`` traced for Grad-CAM, then the study's faithfulness scores
    (pickled; a scoring failure is pickled as its reason so that it is counted, not fatal)."""
    from cds.explain.faithfulness import score_traced
    from cds.explain.gradcam_inputs import traced_quick_read

    traced = traced_quick_read(study, models_dir=models_dir, stages=stages)
    try:
        scores: tuple[str, Any] = (
            "ok",
            score_traced(study_dir, study, traced, models_dir=models_dir, seed=seed),
        )
    except Exception as exc:  # e.g. an unanalysable study has no crops to explain
        scores = ("failed", f"study_failed:{type(exc).__name__}")
    return traced.result, pickle.dumps(scores)


def faithfulness_section(blobs: Sequence[bytes], studies: Sequence[str]) -> dict[str, Any]:
    """cds.explain.faithfulness.aggregate over the studies' cached scores, as its to_json."""
    why = faithfulness_available()
    if why is not None:
        return {"available": False, "reason": why}
    if not blobs:
        return {"available": False, "reason": "no study was scored"}
    from cds.explain.faithfulness import aggregate

    results: list[Any] = []
    failed: Counter[str] = Counter()
    try:
        for blob in blobs:
            status, value = pickle.loads(blob)
            if status == "ok":
                results.append(value)
            else:
                failed[str(value)] += 1
        out = dict(aggregate(len(blobs), results, dict(failed)).to_json())
    except Exception as exc:  # cached scores from a changed class: say so rather than fail
        return {"available": False, "reason": f"faithfulness scores unusable: {type(exc).__name__}: {exc}"}
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
                            "nothing_to_word_share",
                            "model_share_of_worded",
                            "delivered_failing_verification",
                            "rationale_ms_p50",
                        )
                    }
                    for k, v in local.items()
                },
            }
    return out
