"""Daily item-embedding DAG: sessionize -> completeness -> plan -> skip-gram -> fine-tune ->
evaluate -> cold start -> gate -> publish -> retention. Wiring only: every task imports its stage
inside the body and calls one function of ``embedding``; XCom carries small dicts (paths,
counts, metrics), never data. Skip-gram and fine-tune run in a child process each
(``embedding.stages.stage_process``), so they can be killed and are retried from scratch. A
failed task logs one ``ALERT`` line (and
posts it to ``EMBEDDING_ALERT_WEBHOOK`` when set). Environment: ``EMBEDDING_CONF`` (config
file), ``EMBEDDING_CATCHUP``, ``EMBEDDING_RETRIES`` (default 2), ``EMBEDDING_START_DATE``
(default 2026-01-01).
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

from embedding.alerts import task_defaults  # noqa: E402 -- standard library only

CONF = os.environ.get("EMBEDDING_CONF", str(PROJECT_ROOT / "conf" / "default.yaml"))
CATCHUP = os.environ.get("EMBEDDING_CATCHUP", "false").lower() in ("1", "true", "yes")
# the first data interval the schedule (and a backfill) may cover; e.g. 2018-11-06 for trivago
START = pendulum.parse(os.environ.get("EMBEDDING_START_DATE", "2026-01-01"), tz="UTC")
PUBLISHED = Asset(name="item_vectors", uri="file:///item-embeddings/published")
DAILY = CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


def _conf_args() -> tuple[str, list[str]]:
    """(config file, overrides) of this run: its params (checked: embedding.core.run_params), else
    the environment's file. A refused parameter fails the task at once, with no retry."""
    from embedding.core.run_params import run_conf_args

    return run_conf_args(get_current_context()["params"], CONF)


def _config():
    from embedding.core.config import load_config

    return load_config(*_conf_args())


def _interval() -> tuple:
    context = get_current_context()
    return context["data_interval_start"].date(), context["data_interval_end"].date()


def _writer(cfg, release: bool = False):
    """This task's hold on the work folder and publish root (``embedding.core.lock``): the file
    lock for its own life, the run's lease between its tasks; waits out another writer. A
    failure with no retry left releases the lease (the run stops there)."""
    from airflow.exceptions import AirflowFailException

    from embedding.core.lock import default_wait_s, lease_ttl_s, run_task
    from embedding.stages.plan import resolve_paths

    context = get_current_context()
    start, end = _interval()
    paths = resolve_paths(cfg)
    ti = context["ti"]
    return run_task(
        [paths.work_dir, paths.publish_root],
        f"DAG item_embeddings, task {ti.task_id}",
        run=context["run_id"],
        scope=f"item_embeddings {start}..{end}",
        final_try=ti.try_number > context["task"].retries,
        release=release,
        wait_s=default_wait_s(lease_ttl_s() + 300),
        no_retry=(AirflowFailException,),
    )


# the tasks, one stage each; item_embeddings() below wires them


@task
def sessionize() -> dict:
    from embedding.stages.plan import days_to_sessionize, resolve_paths
    from embedding.stages.sessionize import sessionize_stage
    from jobs.sessionize import run_sessionize

    cfg = _config()
    paths = resolve_paths(cfg)
    start, end = _interval()
    days = days_to_sessionize(cfg, paths, start, end)
    with _writer(cfg):
        return sessionize_stage(cfg, paths, days, job=run_sessionize).to_dict()


@task(execution_timeout=timedelta(minutes=5))
def completeness(ingest: dict) -> dict:
    """Fail on a partial or missing day before anything trains on it."""
    from embedding.quality.completeness import check_interval
    from embedding.stages.plan import resolve_paths

    cfg = _config()
    start, end = _interval()
    with _writer(cfg):
        verdict = check_interval(cfg.completeness, Path(resolve_paths(cfg).work_dir), start, end)
        verdict.raise_for_failure()
    return verdict.to_dict()


@task
def plan(ingest: dict, checked: dict) -> dict:
    from embedding.stages.plan import plan_run, resolve_paths

    cfg = _config()
    _, end = _interval()
    start = end - timedelta(days=cfg.window.days)
    with _writer(cfg):
        return plan_run(cfg, resolve_paths(cfg), start, end).to_dict()


@task
def train(run: dict) -> dict:
    from embedding.stages.stage_process import run_stage_process

    with _writer(_config()):
        run_stage_process("train", *_conf_args(), run)
    return run


@task
def finetune(run: dict) -> dict:
    from embedding.stages.stage_process import run_stage_process

    with _writer(_config()):
        run_stage_process("finetune", *_conf_args(), run)
    return run


@task
def evaluate(run: dict) -> dict:
    from embedding.stages.evaluate import evaluate_stage
    from embedding.stages.plan import RunPlan

    cfg = _config()
    with _writer(cfg):
        return evaluate_stage(cfg, RunPlan.from_dict(run)).to_dict()


@task
def cold_start(run: dict, evaluation: dict) -> dict:
    """Vectors for the item table's untrained items, from the chosen candidate."""
    from embedding.stages.cold_start import cold_start_stage
    from embedding.stages.plan import RunPlan
    from embedding.stages.results import Evaluation

    cfg = _config()
    with _writer(cfg):
        plan = RunPlan.from_dict(run)
        return cold_start_stage(cfg, plan, Evaluation.from_dict(evaluation)).to_dict()


@task(retries=0)
def gate(run: dict, evaluation: dict, cold: dict, ingest: dict) -> dict:
    from embedding.stages.evaluate import gate_stage
    from embedding.stages.plan import RunPlan
    from embedding.stages.results import ColdStart, Evaluation

    cfg = _config()
    with _writer(cfg):  # retries=0: a failed gate ends the run and releases its lease
        gate_stage(
            cfg,
            RunPlan.from_dict(run),
            Evaluation.from_dict(evaluation),
            ColdStart.from_dict(cold),
            {"ingest": ingest},
        )
    return evaluation


@task(outlets=[PUBLISHED])
def publish(run: dict, evaluation: dict, cold: dict, ingest: dict) -> dict:
    from embedding.stages.plan import RunPlan
    from embedding.stages.publish import publish_stage
    from embedding.stages.results import ColdStart, Evaluation

    cfg = _config()
    with _writer(cfg):
        return publish_stage(
            cfg,
            RunPlan.from_dict(run),
            Evaluation.from_dict(evaluation),
            ColdStart.from_dict(cold),
            {"ingest": ingest},
        ).to_dict()


@task
def retention(published: dict) -> list[str]:
    """Delete session partitions older than window.retention_days before the interval end."""
    from embedding.core.workdir import apply_retention
    from embedding.stages.plan import resolve_paths

    cfg = _config()
    with _writer(cfg, release=True):  # the run's last task: its lease ends here
        removed = apply_retention(
            Path(resolve_paths(cfg).work_dir), _interval()[1], cfg.window.retention_days
        )
    logging.getLogger(__name__).info("retention: removed %d days %s", len(removed), removed)
    return removed


@dag(
    dag_id="item_embeddings",
    schedule=DAILY,
    start_date=START,
    catchup=CATCHUP,
    max_active_runs=1,
    default_args=task_defaults(
        timedelta(minutes=1),
        max_retry_delay=timedelta(minutes=15),
        execution_timeout=timedelta(hours=2),
    ),
    params={
        "conf": Param(None, type=["null", "string"], description="config file (default: env)"),
        "overrides": Param([], type="array", description="key=value config overrides"),
    },
    tags=["item2vec", "embeddings"],
    doc_md=__doc__,
)
def item_embeddings():
    """Train, evaluate and publish item vectors for one day's data interval."""
    ingest = sessionize()
    run = plan(ingest, completeness(ingest))
    evaluated = evaluate(finetune(train(run)))
    cold = cold_start(run, evaluated)
    retention(publish(run, gate(run, evaluated, cold, ingest), cold, ingest))


item_embeddings()
