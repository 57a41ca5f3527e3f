"""The Spark job on a real standalone cluster (master + worker on 127.0.0.1) gives the same
sessions as local mode, submitted both with spark-submit and through the config's master."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, day_markers, small_config

from jobs.cluster import spark_bin, start_cluster
from jobs.sessionize import run_sessionize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    running = start_cluster(tmp_path_factory.mktemp("spark-logs"), cores=1, memory="1g")
    yield running
    running.stop()


def test_cluster_output_equals_local(cluster, spark, tmp_path: Path) -> None:
    from embedding.devtools.generate import generate_clicklog

    clicks = tmp_path / "clicks"
    generate_clicklog(clicks, events=5_000, days=2, seed=5)
    run_sessionize(small_config(), clicks, tmp_path / "local")
    env = dict(
        os.environ,
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
    )
    common = ["--input", str(clicks), "--set", "spark.shuffle_partitions=2",
              "--set", "spark.driver_memory=1g"]  # fmt: skip
    submit = subprocess.run(
        [str(spark_bin("spark-submit")), "--master", cluster.master_url,
         str(ROOT / "jobs" / "sessionize.py"), *common, "--work-dir", str(tmp_path / "submit"),
         "--result-json", str(tmp_path / "submit.json")],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr[-3000:]
    assert json.loads((tmp_path / "submit.json").read_text())["sessions"] > 0
    by_config = subprocess.run(
        [sys.executable, "-m", "jobs.sessionize", *common, "--work-dir", str(tmp_path / "conf"),
         "--set", f"spark.master={cluster.master_url}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert by_config.returncode == 0, by_config.stderr[-3000:]
    local = day_markers(tmp_path / "local")
    assert len(local) == 2
    assert day_markers(tmp_path / "submit") == local
    assert day_markers(tmp_path / "conf") == local
    logs = "".join(p.read_text(errors="replace") for p in Path(cluster.log_dir).glob("*.log"))
    assert "Registering app" in logs or "Registered app" in logs
