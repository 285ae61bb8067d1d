"""Explanation figures: Grad-CAM faithfulness and rationale verification.

* Faithfulness comes from cds.explain.faithfulness (the Grad-CAM engineer's module): pointing
  game against the synthetic cause regions and the deletion check. It runs its own traced quick
  read per study, so it is evaluated study by study (cached like the pipeline records) on the
  first ``n`` evaluated studies; when the module is not importable the section says so.
* Rationale: cds.explain.evaluation.evaluate_corpus over (a) the fixed 120-case corpus of
  cds.explain.corpus and (b) the finding sets the pipeline actually produced on the test split,
  both with the configured default writer (template) -- the figure that matters for safety is
  ``delivered_failing_verification`` (must be 0). The local language model is too slow to run
  here over a corpus; its last measured figures are quoted from models/rationale-llm/evaluation.json.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cds.evaluation.cache import RecordCache


def faithfulness_available() -> str | None:
    """None when cds.explain.faithfulness can be used, else why not (shown in the report)."""
    try:
        from cds.explain import faithfulness

        faithfulness.evaluate_faithfulness  # noqa: B018  # the entry point must exist
    except Exception as exc:  # ImportError, AttributeError, or a broken optional dependency
        return f"{type(exc).__name__}: {exc}"
    return None


def faithfulness_section(
    data_dir: Path,
    studies: Sequence[str],
    models_dir: Path | None,
    cache: RecordCache,
    tick: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """cds.explain.faithfulness over ``studies`` (its own aggregation, its to_json), cached under
    the pipeline models' key for this exact study list."""
    why = faithfulness_available()
    if why is not None:
        return {"available": False, "reason": why}
    from cds.explain.faithfulness import evaluate_faithfulness

    name = "faithfulness_" + hashlib.sha256("\n".join(studies).encode()).hexdigest()[:12]
    cached = cache.get(name)
    if cached is None:
        try:
            report = evaluate_faithfulness(
                data_dir, studies=list(studies), models_dir=models_dir, progress=tick
            )
        except Exception as exc:  # the Grad-CAM module is optional for the rest of the report
            return {"available": False, "reason": f"faithfulness failed: {type(exc).__name__}: {exc}"}
        cached = dict(report.to_json())
        cache.put(name, cached)
    out = dict(cached)
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
