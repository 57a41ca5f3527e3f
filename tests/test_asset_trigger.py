"""An event on the publish Asset makes the real scheduler run ``serving_refresh``, and that run
moves a real serving process to the new version.

``dag.test()`` (test_serving_refresh) runs the DAG in-process; here the Asset schedule itself
is exercised: api-server, scheduler and dag-processor on 127.0.0.1
(``embedding.devtools.airflow_local``)
with a metadata DB of their own. The event is recorded as the publish task's outlet would
record it, but through the REST API (``POST /api/v2/assets/events``), so the daily DAG stays
paused and trains nothing. The service runs in this process with polling off, so only the
DAG's ``POST /admin/reload`` can move it.
"""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import ROOT

from embedding.core.config import ServingConfig
from embedding.devtools.airflow_env import free_port
from embedding.devtools.airflow_local import AirflowComponentError, LocalAirflow
from serving.app import create_app
from serving.refresh import URL_ENV
from tests.test_serving_reload import V1, V2, serve, write_version

DAG_ID = "serving_refresh"
DAILY_DAG_ID = "item_embeddings"
ASSET_NAME = "item_vectors"
ASSET_URI = "file:///item-embeddings/published"
TASKS = ("check_version", "reload", "confirm")
# no poller, and an admin token variable nobody sets: loopback callers (the DAG) may reload
CFG = ServingConfig(poll_interval_s=0, admin_token_env="TEST_ASSET_TRIGGER_TOKEN")


def write_conf(tmp_path: Path, root: Path) -> Path:
    """conf/default.yaml with the publish root in ``root``."""
    conf = yaml.safe_load((ROOT / "conf" / "default.yaml").read_text())
    conf["paths"] = {"publish_root": str(root)}
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def wait_for_asset(airflow: LocalAirflow, timeout_s: float = 120.0) -> dict:
    """Until the dag-processor has registered the publish Asset with ``serving_refresh`` among
    the DAGs scheduled on it; its REST record."""
    query = urllib.parse.urlencode({"name_pattern": ASSET_NAME, "limit": 100})
    deadline = time.monotonic() + timeout_s
    found: list[dict] = []
    while time.monotonic() < deadline:
        airflow.check_alive()
        found = [
            a
            for a in airflow.api("GET", f"/api/v2/assets?{query}")["assets"]
            if a["name"] == ASSET_NAME and a["uri"] == ASSET_URI
        ]
        if found and DAG_ID in {d["dag_id"] for d in found[0]["scheduled_dags"]}:
            return found[0]
        time.sleep(1)
    raise AirflowComponentError(
        f"asset {ASSET_NAME} ({ASSET_URI}) not scheduling {DAG_ID} after {timeout_s:.0f} s: {found}"
    )


def run_report(airflow: LocalAirflow, runs: list[dict]) -> str:
    """Each run of serving_refresh, its task states and the log tails of unsuccessful tasks."""
    lines = []
    for run in runs:
        states = airflow.task_states(DAG_ID, run["dag_run_id"])
        lines.append(f"{run['dag_run_id']} ({run['run_type']}): {run['state']} {states}")
        for task, state in states.items():
            if state != "success":
                lines.append(f"--- {task} ({state}):")
                lines.append(airflow.task_log_tail(DAG_ID, run["dag_run_id"], task))
    return "\n".join(lines) or "(no runs)"


def leftover_processes(home: Path) -> list[str]:
    """Processes still running with ``home`` as their AIRFLOW_HOME."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("AIRFLOW_HOME") == str(home):
                left.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return left


@pytest.mark.slow
def test_an_asset_event_makes_the_scheduler_refresh_the_service(tmp_path: Path) -> None:
    root = tmp_path / "publish"
    root.mkdir()
    write_version(root, V1)
    conf = write_conf(tmp_path, root)
    home = (tmp_path / "airflow").resolve()

    with serve(create_app(root, CFG)) as client:
        assert client.get("/version").json()["version"] == V1
        env = {
            "EMBEDDING_CONF": str(conf),
            URL_ENV: str(client.base_url).rstrip("/"),
            "EMBEDDING_RETRIES": "0",  # read at parse time: a failure fails at once
            # new DAGs paused (Airflow's default, made explicit): the daily DAG, never
            # unpaused, gets no timetable runs. Not USE_JOB_SCHEDULE=False (test_backfill's
            # way): in Airflow 3.3 it stops the scheduler creating asset-triggered runs too
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        }
        with LocalAirflow(home, port=free_port(), extra=env) as airflow:
            airflow.wait_for_dag(DAILY_DAG_ID)
            airflow.wait_for_dag(DAG_ID)
            asset = wait_for_asset(airflow)
            # an event queues runs only for unpaused consumers: unpause before recording it
            unpaused = airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
            assert unpaused["is_paused"] is False, unpaused

            write_version(root, V2, seed=1)  # CURRENT moves; the service does not poll
            assert client.get("/version").json()["version"] == V1, "moved without the DAG"
            event = airflow.api(
                "POST", "/api/v2/assets/events", {"asset_id": asset["id"], "extra": {"v": V2}}
            )

            airflow.wait_for_runs(DAG_ID, expected=1, timeout_s=150, poll_s=1)
            runs = airflow.runs(DAG_ID)
            report = run_report(airflow, runs)
            states = {r["dag_run_id"]: airflow.task_states(DAG_ID, r["dag_run_id"]) for r in runs}
            consumed = [
                e["id"]
                for r in runs
                for e in airflow.api(
                    "GET",
                    f"/api/v2/dags/{DAG_ID}/dagRuns/"
                    f"{urllib.parse.quote(r['dag_run_id'], safe='')}/upstreamAssetEvents",
                )["asset_events"]
            ]
            daily = airflow.api("GET", f"/api/v2/dags/{DAILY_DAG_ID}")
            daily_runs = airflow.runs(DAILY_DAG_ID)
        served = client.get("/version").json()

    assert len(runs) == 1, f"expected one serving_refresh run:\n{report}"
    run = runs[0]
    assert run["run_type"] == "asset_triggered", report
    assert run["dag_run_id"].startswith("asset_triggered__"), report
    assert run["state"] == "success", report
    assert states[run["dag_run_id"]] == dict.fromkeys(TASKS, "success"), report
    assert consumed == [event["id"]], f"the run consumed {consumed}, not {event}:\n{report}"
    assert served["version"] == V2, f"the service answers {served}:\n{report}"
    reload_log = airflow.task_log_tail(DAG_ID, run["dag_run_id"], "reload")
    assert f"serves {V2} (was {V1}, changed True" in reload_log, reload_log
    assert daily["is_paused"] is True and daily_runs == [], (daily["is_paused"], daily_runs)
    assert leftover_processes(home) == [], "Airflow processes left running"
