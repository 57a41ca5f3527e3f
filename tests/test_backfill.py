"""A backfill carried out by the real scheduler gives the same outputs as the same days run one
by one, and rerunning a day changes nothing.

In Airflow 3 a backfill (``airflow backfill create``) is a set of queued runs that the
scheduler starts and its LocalExecutor carries out, not ``dag.test()``: this test starts
api-server, scheduler and dag-processor on 127.0.0.1 (``embedding.devtools.airflow_local``) with a
metadata DB of their own, apart from the in-process one of ``dag.test()`` (conftest's
``airflow_db``). Tiny data: 30k events over 3 days, training in its deterministic mode
(one worker, fixed hash seed), so the vectors' checksums can be compared.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, day_markers
from test_dag import write_dag_conf

from embedding.devtools.airflow_env import free_port
from embedding.devtools.airflow_local import LocalAirflow
from embedding.vectors import publish

DAG_ID = "item_embeddings"
DAYS = [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)]
DATA_FILES = ("item_vectors.parquet", "ann_index.faiss")  # the manifest's other files hold timings


def root_state(root: Path) -> dict:
    """What a publish root holds, minus timings and paths: CURRENT, the data checksums of each
    version (from its verified manifest), the rejected candidates and the per-day markers."""
    versions = {}
    for name in publish.version_names(root):
        files = publish.verify_version(root / publish.VERSIONS / name)["files"]
        versions[name] = {f: files[f] for f in DATA_FILES if f in files}
    return {
        "current": publish.current_or_none(root),
        "versions": versions,
        "rejected": publish.version_names(root, publish.REJECTED),
        "markers": day_markers(root / ".work"),
    }


def write_conf(tmp_path: Path, clicks: Path, root: Path) -> Path:
    """test_dag's tiny config, holding out the latest share of sessions on every day (with
    ``last_day`` the first day, alone in its window, would fall back to that anyway)."""
    path = write_dag_conf(tmp_path, clicks, root)
    conf = yaml.safe_load(path.read_text())
    conf["evaluate"]["holdout"] = "last_fraction"
    path.write_text(yaml.safe_dump(conf))
    return path


def run_day(dag, day: date, conf: Path) -> str:
    """One day in-process, as ``airflow dags test`` would: a manual run dated the day after
    (the timetable's data interval is the day before the run's date); its final state."""
    logical = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
    return dag.test(logical_date=logical, run_conf={"conf": str(conf)}).state


def create_backfill(airflow: LocalAirflow, conf: Path, limit_s: float = 90.0) -> None:
    """``airflow backfill create`` for DAYS, retried while the DAG the dag-processor has just
    parsed is not yet usable by the CLI (seen once in CI: it failed within seconds of the
    DAG's first appearance in the REST API); any other failure, or one past ``limit_s``, fails
    with the CLI's output."""
    deadline = time.monotonic() + limit_s
    while True:
        result = airflow.cli(
            "backfill", "create", "--dag-id", DAG_ID,
            "--from-date", str(DAYS[0]), "--to-date", str(DAYS[-1]),  # logical dates, inclusive
            "--max-active-runs", "1",  # in day order, one at a time, as a daily schedule would
            "--dag-run-conf", json.dumps({"conf": str(conf)}),
            check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return
        output = (result.stdout + result.stderr)[-3000:]
        assert time.monotonic() < deadline, f"airflow backfill create kept failing:\n{output}"
        time.sleep(3)


def failure_report(airflow: LocalAirflow, runs: list[dict]) -> str:
    """Task states of the scheduler's runs and the log tails of their failed tasks."""
    lines = []
    for run in runs:
        states = airflow.task_states(DAG_ID, run["dag_run_id"])
        lines.append(f"{run['dag_run_id']}: {run['state']} {states}")
        for task, state in states.items():
            if state == "failed":
                lines.append(airflow.task_log_tail(DAG_ID, run["dag_run_id"], task))
    return "\n".join(lines)


@pytest.mark.slow
def test_backfill_by_the_scheduler_equals_days_run_one_by_one_and_a_rerun_changes_nothing(
    airflow_db: Path, tmp_path: Path, spark, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from embedding.devtools.generate import generate_clicklog

    monkeypatch.setenv("EMBEDDING_RETRIES", "0")  # read at parse time: a failure fails at once
    clicks = tmp_path / "clicks"
    generate_clicklog(clicks, events=30_000, days=3, profile="standard", seed=3)
    root_s, root_b = tmp_path / "publish_sequential", tmp_path / "publish_backfill"
    conf_s = write_conf(tmp_path, clicks, root_s)
    conf_b = write_conf(tmp_path, clicks, root_b)
    scheduler_env = {
        "EMBEDDING_RETRIES": "0",
        # no runs on the timetable: unpausing would otherwise queue yesterday's interval;
        # backfill runs are queued by `backfill create` and still run. It also stops the
        # scheduler from creating Asset-triggered runs (test_asset_trigger.py does without it)
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "EMBEDDING_CONF": str(conf_b),  # belt and braces: any run without a conf uses root B
    }
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag(DAG_ID)

    with LocalAirflow(tmp_path / "airflow", port=free_port(), extra=scheduler_env) as airflow:
        airflow.wait_for_dag(DAG_ID)
        # the scheduler starts no run of a paused DAG, backfill runs included (Airflow 3.3)
        airflow.cli("dags", "unpause", DAG_ID)
        create_backfill(airflow, conf_b)

        # while the scheduler works, the same days one by one in this process
        sequential = [run_day(dag, day, conf_s) for day in DAYS]

        airflow.wait_for_runs(DAG_ID, expected=len(DAYS), timeout_s=600)
        runs = airflow.runs(DAG_ID)
        report = failure_report(airflow, runs)

    # one backfill run per data day: a run's logical date is its data interval's start
    assert [r["run_type"] for r in runs] == ["backfill"] * len(DAYS), report
    assert [r["data_interval_start"][:10] for r in runs] == [str(d) for d in DAYS], report
    assert [r["data_interval_end"][:10] for r in runs] == [
        str(d + timedelta(days=1)) for d in DAYS
    ], report
    assert [r["state"] for r in runs] == sequential == ["success"] * len(DAYS), report

    state_s, state_b = root_state(root_s), root_state(root_b)
    assert state_s["current"] is not None and state_s["current"].startswith("20260103-")
    assert "item_vectors.parquet" in state_s["versions"][state_s["current"]]
    assert {str(d) for d in DAYS} <= set(state_s["markers"])  # and window days before them
    assert state_b == state_s

    # rerunning the last day finds its version published and changes nothing
    assert run_day(dag, DAYS[-1], conf_s) == "success"

    assert root_state(root_s) == state_s
    last = json.loads((root_s / ".work" / "last_publish.json").read_text())
    assert last["already_published"] is True and last["version"] == state_s["current"]
