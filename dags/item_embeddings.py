"""Daily item-embedding DAG: sessionize -> plan -> skip-gram -> fine-tune -> evaluate -> gate ->
publish. Wiring only: every task imports its stage inside the body and calls one function of
``embedding.pipeline``; XCom carries small dicts (paths, counts, metrics), never data.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # the project is importable without an install too
    sys.path.insert(0, str(PROJECT_ROOT))

CONF = os.environ.get("EMBEDDING_CONF", str(PROJECT_ROOT / "conf" / "default.yaml"))
CATCHUP = os.environ.get("EMBEDDING_CATCHUP", "false").lower() in ("1", "true", "yes")
PUBLISHED = Asset(name="item_vectors", uri="file:///item-embeddings/published")
DAILY = CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


def _config():
    from embedding.config import load_config

    params = get_current_context()["params"]
    return load_config(params.get("conf") or CONF, list(params.get("overrides") or []))


def _interval() -> tuple:
    context = get_current_context()
    return context["data_interval_start"].date(), context["data_interval_end"].date()


@dag(
    dag_id="item_embeddings",
    schedule=DAILY,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=CATCHUP,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=2),
    },
    params={
        "conf": Param(None, type=["null", "string"], description="config file (default: env)"),
        "overrides": Param([], type="array", description="key=value config overrides"),
    },
    tags=["item2vec", "embeddings"],
    doc_md=__doc__,
)
def item_embeddings():
    """Train, evaluate and publish item vectors for one day's data interval."""

    @task
    def sessionize() -> dict:
        from embedding.pipeline import days_to_sessionize, resolve_paths, sessionize_stage

        cfg = _config()
        paths = resolve_paths(cfg)
        start, end = _interval()
        return sessionize_stage(cfg, paths, days_to_sessionize(cfg, paths, start, end))

    @task
    def plan(ingest: dict) -> dict:
        from embedding.pipeline import plan_run, resolve_paths

        cfg = _config()
        _, end = _interval()
        start = end - timedelta(days=cfg.window.days)
        return plan_run(cfg, resolve_paths(cfg), start, end).to_dict()

    @task
    def train(run: dict) -> dict:
        from embedding.pipeline import RunPlan, train_stage

        train_stage(_config(), RunPlan.from_dict(run))
        return run

    @task
    def finetune(run: dict) -> dict:
        from embedding.pipeline import RunPlan, finetune_stage

        finetune_stage(_config(), RunPlan.from_dict(run))
        return run

    @task
    def evaluate(run: dict) -> dict:
        from embedding.pipeline import RunPlan, evaluate_stage

        return evaluate_stage(_config(), RunPlan.from_dict(run))

    @task(retries=0)
    def gate(run: dict, evaluation: dict, ingest: dict) -> dict:
        from embedding.pipeline import RunPlan, gate_stage

        gate_stage(_config(), RunPlan.from_dict(run), evaluation, {"ingest": ingest})
        return evaluation

    @task(outlets=[PUBLISHED])
    def publish(run: dict, evaluation: dict, ingest: dict) -> dict:
        from embedding.pipeline import RunPlan, publish_stage

        return publish_stage(_config(), RunPlan.from_dict(run), evaluation, {"ingest": ingest})

    @task
    def retention(published: dict) -> list[str]:
        """Delete session partitions older than window.retention_days before the interval end."""
        from embedding.pipeline import resolve_paths
        from embedding.window import apply_retention

        cfg = _config()
        removed = apply_retention(
            Path(resolve_paths(cfg).work_dir), _interval()[1], cfg.window.retention_days
        )
        logging.getLogger(__name__).info("retention: removed %d days %s", len(removed), removed)
        return removed

    ingest = sessionize()
    run = plan(ingest)
    evaluated = evaluate(finetune(train(run)))
    retention(publish(run, gate(run, evaluated, ingest), ingest))


item_embeddings()
