"""Every stage in order, as the DAG runs them: the CLI's ``run``."""

from __future__ import annotations

import logging
from datetime import date, timedelta

from embedding.core.config import Config
from embedding.stages.cold_start import cold_start_stage
from embedding.stages.evaluate import evaluate_stage, gate_stage
from embedding.stages.plan import Paths, days_to_sessionize, plan_run
from embedding.stages.publish import publish_stage
from embedding.stages.results import PipelineResult
from embedding.stages.sessionize import sessionize_stage
from embedding.stages.sessionize_app import Sessionizer
from embedding.stages.train import finetune_stage, train_stage
from embedding.vectors.publish import FaultHook

logger = logging.getLogger(__name__)


def run_pipeline(
    cfg: Config,
    paths: Paths,
    interval: tuple[date, date] | None = None,
    fault: FaultHook | None = None,
    sessionize: Sessionizer | None = None,
) -> PipelineResult:
    """Every stage in order, as the DAG runs them (the CLI's ``run``).

    ``interval`` None: the whole input, first day to last day plus one. ``sessionize``: as
    ``sessionize_stage``'s ``job``.
    """
    days = None
    if interval is not None:
        days = days_to_sessionize(cfg, paths, *interval)
    ingest = sessionize_stage(cfg, paths, days, sessionize)
    if interval is None:
        interval = (
            date.fromisoformat(ingest.days[0]),
            date.fromisoformat(ingest.days[-1]) + timedelta(days=1),
        )
        start = interval[0]
    else:
        start = max(interval[1] - timedelta(days=cfg.window.days), date.min)
    plan = plan_run(cfg, paths, start, interval[1])
    extra = {"ingest": ingest.to_dict()}
    train_stage(cfg, plan)
    finetune_stage(cfg, plan)
    evaluation = evaluate_stage(cfg, plan)
    cold = cold_start_stage(cfg, plan, evaluation)
    gate_stage(cfg, plan, evaluation, cold, extra)
    published = publish_stage(cfg, plan, evaluation, cold, extra, fault=fault)
    return PipelineResult(plan, ingest, evaluation, cold, published, extra)
