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


def test_dag_folder_has_no_import_errors(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("item_embeddings")
    assert dag is not None
    assert {t.task_id for t in dag.tasks} == {
        "sessionize",
        "plan",
        "train",
        "finetune",
        "evaluate",
        "gate",
        "publish",
        "retention",
    }
    assert dag.max_active_runs == 1


def test_dag_module_import_is_light() -> None:
    code = (
        "import time, sys, importlib.util\n"
        "import airflow.sdk\n"
        "t = time.perf_counter()\n"
        f"path = {str(ROOT / 'dags' / 'item_embeddings.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('d', path)\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "heavy = [n for n in ('pyspark', 'torch', 'gensim', 'pandas') if n in sys.modules]\n"
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
