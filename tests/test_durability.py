"""Durability of the work folder and publish root: one writer at a time (file lock and run
lease), publishes flushed to disk, damaged versions named and repaired, and a service that starts
on the newest version that verifies. Real files, real processes, real HTTP app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedding.cli import main
from embedding.core.config import ServingConfig
from embedding.vectors import publish
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

OLD = "20260105-aaaaaaaa"
NEW = "20260106-bbbbbbbb"

# holds <root>/.lock the way a writer does (flock, then its name in the file), until killed
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
record = {"pid": os.getpid(), "host": "ops-box", "command": "nightly backfill",
          "since": "2026-01-09T00:00:00+00:00"}
os.write(fd, json.dumps(record).encode())
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _vectors(n: int = 40, dim: int = 8, seed: int = 0) -> ItemVectors:
    rng = np.random.default_rng(seed)
    return ItemVectors(
        ids=[f"i{i:03d}" for i in range(n)],
        vectors=normalize_rows(rng.normal(size=(n, dim)).astype(np.float32)),
        counts=np.arange(n, dtype=np.int64),
    )


def _publish(root: Path, version: str, seed: int = 0, **kwargs) -> publish.PublishResult:
    return publish.publish_version(
        root, version, _vectors(seed=seed), {}, {"gate": {"passed": True}}, **kwargs
    )


def _hold(lock_file: Path, seconds: float = 120) -> subprocess.Popen:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


# --- 1. one writer at a time --------------------------------------------------------------------


def test_a_second_run_on_a_held_publish_root_stops_at_once_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, work = tmp_path / "publish", tmp_path / "work"
    log = tmp_path / "clicks.csv"
    log.write_text("user_id,item_id,ts,event_type\nu1,i1,2026-01-01T00:00:00,click\n")
    holder = _hold(root / ".lock")
    try:
        started = time.monotonic()
        code = main(
            ["run", "--input", str(log), "--publish-root", str(root), "--work-dir", str(work)]
        )
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 1, err
    assert "nightly backfill" in err and f"pid {holder.pid}" in err and "ops-box" in err
    assert waited < 30  # refused at once, before Spark starts
    assert not (root / "CURRENT").exists() and not (work / "sessions").exists()


def test_a_writer_given_wait_seconds_goes_on_once_the_holder_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "publish"
    _publish(root, OLD)
    _publish(root, NEW, seed=1)
    holder = _hold(root / ".lock", seconds=2)
    code = main(["rollback", OLD, "--publish-root", str(root), "--wait", "60"])
    holder.wait()
    assert code == 0, capsys.readouterr().err
    assert publish.current_or_none(root) == OLD


def _lease(folder: Path, run: str, scope: str, expires_in_s: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lease = {
        "run": run,
        "scope": scope,
        "command": "DAG item_embeddings, task train",
        "pid": 4242,
        "host": "airflow-worker-1",
        "since": "2026-01-09T00:00:00+00:00",
        "expires_at": time.time() + expires_in_s,
        "expires": "soon",
    }
    (folder / ".lease.json").write_text(json.dumps(lease))


def test_a_dag_runs_lease_keeps_a_cli_writer_out_between_its_tasks_until_it_expires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "publish"
    _publish(root, OLD)
    _publish(root, NEW, seed=1)
    run = "scheduled__2026-01-09T00:00:00+00:00"
    # between two tasks of a DAG run no process holds the file lock: only the lease is there
    _lease(root, run, "item_embeddings 2026-01-08..2026-01-09", expires_in_s=600)
    code = main(["rollback", OLD, "--publish-root", str(root)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert run in err and "airflow-worker-1" in err and ".lease.json" in err
    assert publish.current_or_none(root) == NEW

    _lease(root, run, "item_embeddings 2026-01-08..2026-01-09", expires_in_s=-1)  # run died
    assert main(["rollback", OLD, "--publish-root", str(root)]) == 0
    assert publish.current_or_none(root) == OLD


def test_the_lease_admits_tasks_of_its_own_run_or_interval_and_its_last_task_releases_it(
    tmp_path: Path,
) -> None:
    from embedding.core.lock import LockHeldError, exclusive, lock_is_free, read_lease

    roots = [tmp_path / "work", tmp_path / "publish"]
    scope = "item_embeddings 2026-01-08..2026-01-09"
    with exclusive(roots, "task sessionize", run="run-a", scope=scope):
        assert not lock_is_free(roots[0]) and not lock_is_free(roots[1])
    assert lock_is_free(roots[0])  # between tasks: no file lock, but the lease
    assert read_lease(roots[0])["run"] == "run-a"
    with pytest.raises(LockHeldError, match="run-a"):
        with exclusive(roots, "task train", run="run-b", scope="item_embeddings other"):
            pass
    with pytest.raises(LockHeldError, match="run-a"):
        with exclusive(roots, "python -m embedding run"):
            pass
    # a rerun of the same interval (e.g. a new `airflow dags test` after a kill) takes it over
    with exclusive(roots, "task train", run="run-a2", scope=scope):
        pass
    with exclusive(roots, "task retention", run="run-a2", scope=scope, release=True):
        pass
    assert read_lease(roots[0]) is None and read_lease(roots[1]) is None
    with exclusive(roots, "python -m embedding run"):
        pass


# --- 2. durable publishes and damaged versions --------------------------------------------------


def test_a_publish_flushes_every_file_and_every_folder_its_renames_touch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    root = (tmp_path / "publish").resolve()
    _publish(
        root,
        OLD,
        extra_files={"report.html": "<html></html>"},
        write_extra=lambda folder: (folder / "ann_index.bin").write_bytes(b"\x00" * 64),
    )
    version_dir = root / "versions" / OLD
    names = {Path(p).name for p in flushed}
    for member in ("item_vectors.parquet", "report.html", "ann_index.bin", "manifest.json"):
        assert member in names, f"{member} never flushed: {sorted(names)}"
    for folder in (root, root / "versions", root / ".tmp"):
        assert str(folder) in flushed, f"{folder} never flushed"
    # the staged folder is flushed before its rename, and CURRENT's rename after it
    staged = [p for p in flushed if Path(p).parent == root / ".tmp"]
    assert staged, "the staged version folder was never flushed"
    assert flushed.index(staged[-1]) < flushed.index(str(root / "versions"))
    assert publish.current_or_none(root) == OLD
    assert set(json.loads((version_dir / "manifest.json").read_text())["files"]) == {
        "item_vectors.parquet",
        "report.html",
        "ann_index.bin",
    }


def test_a_rerun_replaces_a_version_that_a_power_cut_left_with_an_empty_manifest(
    tmp_path: Path,
) -> None:
    root = tmp_path / "publish"
    _publish(root, OLD)
    (root / "versions" / OLD / "manifest.json").write_text("")
    result = _publish(root, OLD)
    assert not result.already_published and result.current == OLD
    publish.verify_version(root / "versions" / OLD)
    assert not any((root / ".tmp").iterdir())


def test_the_service_starts_on_the_newest_valid_version_when_currents_is_damaged(
    tmp_path: Path,
) -> None:
    from serving.app import create_app

    root = tmp_path / "publish"
    _publish(root, OLD)
    _publish(root, NEW, seed=1)
    (root / "versions" / NEW / "manifest.json").write_text("")
    cfg = ServingConfig(poll_interval_s=0)
    with TestClient(create_app(root, cfg)) as client:
        health = client.get("/health").json()
        assert health["version"] == OLD, health
        assert client.get("/items/i001/similar", params={"k": 3}).status_code == 200
