"""The DAG folder imports cleanly and cheaply, and the DAG runs end to end with dag.test()."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from embedding import publish

EXPECTED_TASKS = {
    "item_embeddings": {
        "sessionize",
        "completeness",
        "plan",
        "train",
        "finetune",
        "evaluate",
        "gate",
        "publish",
        "retention",
    },
    "serving_refresh": {"check_version", "reload", "confirm"},
}


def test_dag_folder_has_no_import_errors_and_each_dag_is_production_ready(
    airflow_db: Path,
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.dag_cycle_tester import check_cycle

    from embedding.alerts import on_failure

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == set(EXPECTED_TASKS)
    for dag_id, tasks in EXPECTED_TASKS.items():
        dag = bag.get_dag(dag_id)
        check_cycle(dag)  # raises on a cycle
        assert {t.task_id for t in dag.tasks} == tasks
        assert dag.max_active_runs == 1
        assert dag.tags and "embeddings" in dag.tags
        for t in dag.tasks:
            assert t.owner == "recsys-embeddings", (dag_id, t.task_id)
            assert t.execution_timeout is not None, (dag_id, t.task_id)
            assert (
                on_failure in (t.on_failure_callback or []) or t.on_failure_callback is on_failure
            )
            if t.task_id != "gate":  # a failed gate is a verdict, not a glitch: never retried
                assert t.retries >= 1, (dag_id, t.task_id)
    daily = bag.get_dag("item_embeddings")
    assert daily.get_task("gate").retries == 0
    publish_outlets = daily.get_task("publish").outlets
    refresh = bag.get_dag("serving_refresh")
    assert [a.name for a in publish_outlets] == ["item_vectors"]
    assert "item_vectors" in str(refresh.timetable.asset_condition)


@pytest.mark.parametrize("dag_file", ["item_embeddings.py", "serving_refresh.py"])
def test_dag_module_import_is_light(dag_file: str) -> None:
    code = (
        "import time, sys, importlib.util\n"
        "import airflow.sdk\n"
        "t = time.perf_counter()\n"
        f"path = {str(ROOT / 'dags' / dag_file)!r}\n"
        "spec = importlib.util.spec_from_file_location('d', path)\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "heavy = [n for n in ('pyspark', 'torch', 'gensim', 'pandas', 'numpy')"
        " if n in sys.modules]\n"
        "print(time.perf_counter() - t, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed, heavy = out.stdout.strip().split(" ", 1)
    assert float(elapsed) < 1.0
    assert heavy == "[]"


@pytest.mark.slow
def test_dag_runs_end_to_end(airflow_db: Path, tmp_path: Path, spark) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from embedding.generate import generate_clicklog

    clicks = tmp_path / "clicks"
    generate_clicklog(clicks, events=30_000, days=3, profile="standard", seed=3)
    conf = yaml.safe_load((ROOT / "conf" / "default.yaml").read_text())
    conf["paths"] = {"input": str(clicks), "publish_root": str(tmp_path / "publish")}
    conf["window"] = {"days": 3}
    # a tiny log: gensim's `sample` is a share of the corpus, so the default (3e-5, tuned on
    # 200k events) would throw most of 30k events away
    conf["word2vec"].update({"epochs": 30, "workers": 1, "sample": 0.001})
    conf["finetune"].update({"epochs": 2})
    conf["spark"]["shuffle_partitions"] = 2
    conf_path = tmp_path / "conf.yaml"
    conf_path.write_text(yaml.safe_dump(conf))

    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("item_embeddings")
    # a data-interval timetable: the run at 2026-01-04 covers 2026-01-03
    run = dag.test(logical_date=datetime(2026, 1, 4, tzinfo=UTC), run_conf={"conf": str(conf_path)})
    assert run.state == "success", run.state
    root = tmp_path / "publish"
    version = publish.read_current(root)
    assert version is not None and version.startswith("20260103-")
    manifest = publish.verify_version(root / "versions" / version)
    assert manifest["data_interval"] == {"start": "2026-01-01", "end": "2026-01-04"}
    assert manifest["days"] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    last = json.loads((root / ".work" / "last_publish.json").read_text())
    assert last["version"] == version and last["already_published"] is False
