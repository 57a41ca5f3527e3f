"""The DAG folder imports cleanly and cheaply, and the DAG runs end to end with dag.test()."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from embedding.vectors import publish

EXPECTED_TASKS = {
    "item_embeddings": {
        "sessionize",
        "completeness",
        "plan",
        "train",
        "finetune",
        "evaluate",
        "cold_start",
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


def write_dag_conf(tmp_path: Path, clicks: Path, root: Path) -> Path:
    conf = yaml.safe_load((ROOT / "conf" / "default.yaml").read_text())
    conf["paths"] = {"input": str(clicks), "publish_root": str(root)}
    conf["window"] = {"days": 3}
    # a tiny log: gensim's `sample` is a share of the corpus, so the default (3e-5, tuned on
    # 200k events) would throw most of 30k events away
    conf["word2vec"].update({"epochs": 30, "workers": 1, "sample": 0.001})
    conf["finetune"].update({"epochs": 2})
    conf["spark"]["shuffle_partitions"] = 2
    conf_path = tmp_path / f"conf-{root.name}.yaml"
    conf_path.write_text(yaml.safe_dump(conf))
    return conf_path


def kill_training_when_it_starts(work: Path, killed: list[int], after_s: float = 1.0) -> None:
    """SIGKILL the skip-gram child process ``after_s`` seconds after its pid file appears."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for pid_path in work.glob("runs/*/train.pid"):
            try:
                pid = int(pid_path.read_text())
            except (OSError, ValueError):
                continue  # being written
            time.sleep(after_s)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def published_data(root: Path) -> dict[str, str]:
    """sha256 of CURRENT's data files: the vectors and the index graph (the report and the
    index metadata carry timings)."""
    version = publish.current_or_none(root)
    files = publish.verify_version(root / "versions" / version)["files"]
    return {
        name: files[name] for name in ("item_vectors.parquet", "ann_index.faiss") if name in files
    }


@pytest.mark.slow
def test_dag_end_to_end_a_killed_training_reruns_to_the_same_output_a_failed_gate_keeps_current(
    airflow_db: Path,
    tmp_path: Path,
    spark,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from embedding.devtools.generate import generate_clicklog

    monkeypatch.setenv("EMBEDDING_RETRIES", "0")  # read at parse time: the kill fails the run
    clicks = tmp_path / "clicks"
    generate_clicklog(clicks, events=30_000, days=3, profile="standard", seed=3)
    root_a, root_b = tmp_path / "publish_a", tmp_path / "publish_b"
    conf_a = write_dag_conf(tmp_path, clicks, root_a)
    conf_b = write_dag_conf(tmp_path, clicks, root_b)
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("item_embeddings")
    # a data-interval timetable: the run at 2026-01-04 covers 2026-01-03
    day = datetime(2026, 1, 4, tzinfo=UTC)

    run = dag.test(logical_date=day, run_conf={"conf": str(conf_a)})

    assert run.state == "success", run.state
    version = publish.current_or_none(root_a)
    assert version is not None and version.startswith("20260103-")
    manifest = publish.verify_version(root_a / "versions" / version)
    assert manifest["data_interval"] == {"start": "2026-01-01", "end": "2026-01-04"}
    assert manifest["days"] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    last = json.loads((root_a / ".work" / "last_publish.json").read_text())
    assert last["version"] == version and last["already_published"] is False
    marker = json.loads((root_a / ".work" / "_days" / "2026-01-03.json").read_text())
    assert marker["n_events"] > 0 and len(marker["code_hash"]) == 64

    # the same day in another root, with the skip-gram process killed mid-way
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_training_when_it_starts, args=(root_b / ".work", killed), daemon=True
    )
    killer.start()
    broken = dag.test(logical_date=day, run_conf={"conf": str(conf_b)})
    killer.join(timeout=5)

    assert killed and broken.state == "failed", broken.state
    states = {ti.task_id: ti.state for ti in broken.get_task_instances()}
    assert states["train"] == "failed" and states["publish"] == "upstream_failed"
    assert publish.current_or_none(root_b) is None  # no CURRENT ...
    assert publish.version_names(root_b) == []  # ... and no version, partial or not
    staging = root_b / ".tmp"
    assert not staging.exists() or not any(staging.iterdir())  # nothing half-written left

    rerun = dag.test(logical_date=day, run_conf={"conf": str(conf_b)})

    assert rerun.state == "success", rerun.state
    assert publish.current_or_none(root_b) == version
    assert "item_vectors.parquet" in published_data(root_a)
    assert published_data(root_b) == published_data(root_a)  # byte-identical output

    # a broken model for the same day (1 epoch, a tiny learning rate): the gate fails the run,
    # the publish never runs, CURRENT stays, the ALERT line says why
    with caplog.at_level(logging.ERROR, logger="embedding.alerts"):
        refused = dag.test(
            logical_date=day,
            run_conf={
                "conf": str(conf_b),
                "overrides": [
                    "word2vec.epochs=1",
                    "word2vec.alpha=0.0001",
                    "finetune.enabled=false",
                ],
            },
        )

    assert refused.state == "failed", refused.state
    states = {ti.task_id: ti.state for ti in refused.get_task_instances()}
    assert states["gate"] == "failed" and states["publish"] == "upstream_failed"
    assert publish.current_or_none(root_b) == version  # CURRENT unchanged
    assert publish.version_names(root_b) == [version]
    assert len(publish.version_names(root_b, publish.REJECTED)) == 1  # the candidate, for review
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    (gate_alert,) = [a for a in alerts if "item_embeddings.gate failed" in a]
    assert "QualityGateError: quality gate failed" in gate_alert
    assert "CURRENT unchanged" in gate_alert


def test_run_parameters_may_tune_the_model_but_never_name_files_hosts_or_secrets(
    airflow_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A trigger is not the operator: a `conf` outside conf/ or an override of a path, host,
    port, retention or `*_env` fails the run at its first task, with no retry, touching
    nothing."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv("EMBEDDING_CONF_DIRS", raising=False)  # only the project's conf/
    monkeypatch.setenv("EMBEDDING_RETRIES", "2")  # a refusal must not wait for retries
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    evil_conf = write_dag_conf(tmp_path, tmp_path / "clicks", victim)
    day = datetime(2026, 1, 4, tzinfo=UTC)
    attempts = {
        "item_embeddings": [
            {"conf": str(evil_conf)},
            {"conf": "../../" + str(evil_conf)},  # climbing out of conf/
            {"overrides": [f"paths.work_dir={victim}", "window.retention_days=1"]},
            {"overrides": ["publish.keep_versions=2"]},
            {"overrides": ["word2vec.epochs=1", "sessionize.salt_env=HOME"]},
        ],
        "serving_refresh": [
            {"overrides": ["serving.host=attacker.example", "serving.admin_token_env=AWS_KEY"]},
            {"overrides": ["serving.port=1"]},
        ],
    }
    for dag_id, confs in attempts.items():
        dag = bag.get_dag(dag_id)
        for run_conf in confs:
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="embedding.alerts"):
                run = dag.test(logical_date=day, run_conf=run_conf)
            assert run.state == "failed", (dag_id, run_conf)
            failed = [ti for ti in run.get_task_instances() if ti.state == "failed"]
            assert len(failed) == 1 and failed[0].try_number == 1, (dag_id, run_conf)
            alerts = [r.getMessage() for r in caplog.records if "ALERT" in r.getMessage()]
            assert any("ConfigError: run parameter" in a for a in alerts), (run_conf, alerts)
            day = day.replace(day=day.day + 1)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]  # nothing touched


def test_run_parameters_within_the_allow_list_are_accepted() -> None:
    from embedding.core.run_params import allowed_override_key, checked_run_params

    conf, overrides = checked_run_params(
        {"conf": "default.yaml", "overrides": ["word2vec.epochs=3", "seed=7"]}, "env.yaml"
    )
    assert conf == str((ROOT / "conf" / "default.yaml").resolve())
    assert overrides == ["word2vec.epochs=3", "seed=7"]
    assert checked_run_params({}, "env.yaml") == ("env.yaml", [])  # the operator's default
    for key in ("finetune.temperature", "evaluate.max_cases", "sessionize.gap_minutes"):
        assert allowed_override_key(key), key
    refused = ["paths.input", "serving.port", "gate.min_value", "window.retention_days",
               "sessionize.salt_env", "spark.master", "word2vec", "source.columns.ts"]  # fmt: skip
    for key in refused:
        assert not allowed_override_key(key), key
