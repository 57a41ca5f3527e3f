"""Shared fixtures: one Spark session per test run, an isolated Airflow home, small real data.

Environment for Airflow is set here, before anything imports airflow, so ``dag.test()`` runs
against a throwaway SQLite metadata DB migrated once per session.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
TRIVAGO = SHARED_DATA / "trivago_100k.parquet"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-test-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYTHONHASHSEED", "0")
# a fixed user-id salt: outputs are reproducible across work folders (tests of the salt itself
# unset it); without it every work folder would get its own random salt
TEST_USER_SALT = "tests-fixed-user-id-salt-0123456789"
os.environ["EMBEDDING_USER_SALT"] = TEST_USER_SALT
# DAG runs in tests name configs written under the temp folder: the operator's allow-list for a
# run's `conf` parameter (tests of the refusal unset it)
os.environ["EMBEDDING_CONF_DIRS"] = tempfile.gettempdir()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

from embedding.core.config import Config, load_config  # noqa: E402

logging.getLogger("py4j").setLevel(logging.WARNING)


def small_config(**overrides: object) -> Config:
    """A fast config for tests: tiny Spark, fewer epochs, deterministic gensim."""
    items = {
        "spark.shuffle_partitions": 2,
        "word2vec.workers": 1,
        "finetune.epochs": 5,
        "finetune.compare_loss": True,  # the report's loss comparison is exercised too
        **overrides,
    }
    as_yaml = {k: v if isinstance(v, str) else json.dumps(v) for k, v in items.items()}
    return load_config(ROOT / "conf" / "default.yaml", [f"{k}={v}" for k, v in as_yaml.items()])


def day_markers(work: Path) -> dict[str, dict]:
    """The per-day completion markers of a work folder (counts and content hashes), minus the
    input path, so runs over different copies of a log compare equal."""
    out = {}
    for marker in sorted((work / "_days").glob("*.json")):
        stats = json.loads(marker.read_text())
        stats.pop("source")
        out[marker.stem] = stats
    return out


@pytest.fixture(scope="session")
def spark():
    from embedding.core.config import SparkConfig
    from jobs.spark import get_spark

    session = get_spark(SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=2))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def generated_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `standard` profile log: 200k events over 8 days (the same as `make run`'s sample)."""
    from embedding.devtools.generate import generate_clicklog

    out = tmp_path_factory.mktemp("gen") / "clicks"
    generate_clicklog(out, events=200_000, days=8, profile="standard", seed=7)
    return out


@pytest.fixture(scope="session")
def generated_run(generated_log: Path, tmp_path_factory: pytest.TempPathFactory, spark) -> dict:
    """The whole pipeline once over the generated log (CLI path), shared by several tests."""
    from embedding.stages.pipeline import run_pipeline
    from embedding.stages.plan import resolve_paths
    from jobs.sessionize import run_sessionize

    cfg = small_config()
    root = tmp_path_factory.mktemp("pub")
    paths = resolve_paths(cfg, generated_log, root)
    result = run_pipeline(cfg, paths, sessionize=run_sessionize)
    return {"cfg": cfg, "paths": paths, "result": result, "root": root}


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate a fresh SQLite metadata DB once for the session."""
    from airflow.utils import db

    db.resetdb()
    return _AIRFLOW_HOME
