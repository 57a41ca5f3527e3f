"""The evaluate and gate stages: every candidate and the baselines scored on the held-out
sessions, the published candidate chosen on validation, the last published version compared;
then the quality gate, which records a refused candidate under ``rejected/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from embedding.core import chaos
from embedding.core.atomic import write_text_atomic
from embedding.core.config import Config
from embedding.core.errors import QualityGateError
from embedding.stages.inputs import item_markets, load_window, test_conversions
from embedding.stages.plan import RunPlan, artefact
from embedding.stages.publish import REPORT_FILE, manifest_fields, version_report
from embedding.stages.results import ColdStart, Evaluation
from embedding.stages.train import SELECTABLE, load_candidates
from embedding.vectors import publish
from embedding.vectors.parquet_io import VECTORS_FILE, read_vectors

logger = logging.getLogger(__name__)


def evaluate_stage(cfg: Config, plan: RunPlan) -> Evaluation:
    """Metrics of every candidate and the popularity baseline, and the gate verdict."""
    from embedding.quality.evaluate import (
        evaluate_candidates,
        score_previous,
        select_on_validation,
    )
    from embedding.quality.gate import check_gate

    out = artefact(plan, "metrics.json")
    if plan.already_published:
        manifest = publish.verify_version(Path(plan.publish_root) / publish.VERSIONS / plan.version)
        return Evaluation.from_dict(manifest)
    data = load_window(cfg, plan)
    candidates = load_candidates(cfg, plan)
    metrics = evaluate_candidates(
        candidates,
        data.train_sessions,
        data.test_sessions,
        cfg.evaluate,
        cfg.seed,
        test_conversions(plan, data.test_sessions),
        cfg.evaluate.ppmi_svd_dim or candidates["word2vec"].dim,
        cfg.gate,
    )
    metrics["holdout"] = data.holdout
    selectable = {n: v for n, v in candidates.items() if n in SELECTABLE}
    metrics["selection"] = {
        "split": data.validation,
        "n_sessions": data.val_sessions.num_rows,
        **select_on_validation(selectable, data.val_sessions, cfg.evaluate, cfg.gate.metric,
                               cfg.seed),
    }  # fmt: skip
    metrics["published"] = metrics["selection"]["chosen"]
    root = Path(plan.publish_root)
    previous = publish.previous_version(root, publish.version_day(plan.version))
    metrics["previous"] = None
    if previous is not None:
        # like with like: the candidate is scored without cold-start rows, so the previous
        # version is too (its cold-start rows would cover cases the candidate cannot)
        old, _ = read_vectors(root / publish.VERSIONS / previous / VECTORS_FILE, trained_only=True)
        metrics["previous"] = score_previous(
            old, previous, candidates[metrics["published"]], data.test_sessions,
            cfg.evaluate, cfg.seed,
        )  # fmt: skip
    gate = check_gate(metrics, metrics["published"], cfg.gate)
    result = Evaluation(metrics, gate)
    chaos.point("evaluate.scored")
    write_text_atomic(out, json.dumps(result.to_dict(), indent=1))
    return result


def gate_stage(
    cfg: Config,
    plan: RunPlan,
    evaluation: Evaluation,
    cold_start: ColdStart,
    extra: dict | None = None,
) -> None:
    """Raise QualityGateError (after recording the candidate under ``rejected/``) on failure."""
    if plan.already_published or evaluation.gate.passed:
        return
    fields = manifest_fields(cfg, plan, evaluation, cold_start, extra)
    candidate = load_candidates(cfg, plan)[evaluation.published]
    report = version_report(plan.version, fields, candidate, item_markets(plan), cfg.seed)
    target = publish.reject_version(
        Path(plan.publish_root), plan.version, fields, {REPORT_FILE: report}
    )
    raise QualityGateError(
        f"quality gate failed for {plan.version}: {evaluation.gate.reason}; "
        f"candidate recorded in {target}, CURRENT unchanged"
    )
