"""Serving refresh DAG, scheduled on the publish Asset: check the new version, ask the service
to reload it (``POST /admin/reload``), confirm with ``GET /version``. Wiring only: the steps
live in ``serving.refresh``. The service URL comes from ``EMBEDDING_SERVING_URL`` (default:
``serving.host``/``serving.port`` of the config), its admin token from the variable named by
``serving.admin_token_env``.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # the project is importable without an install too
    sys.path.insert(0, str(PROJECT_ROOT))

from embedding.alerts import task_defaults  # noqa: E402 -- standard library only

CONF = os.environ.get("EMBEDDING_CONF", str(PROJECT_ROOT / "conf" / "default.yaml"))
# the same Asset the daily DAG's publish task emits (name and URI must match)
PUBLISHED = Asset(name="item_vectors", uri="file:///item-embeddings/published")


def _config():
    from embedding.core.config import load_config
    from embedding.core.run_params import run_conf_args

    return load_config(*run_conf_args(get_current_context()["params"], CONF))


@dag(
    dag_id="serving_refresh",
    schedule=[PUBLISHED],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(timedelta(seconds=30), execution_timeout=timedelta(minutes=15)),
    params={
        "conf": Param(None, type=["null", "string"], description="config file (default: env)"),
        "overrides": Param([], type="array", description="key=value config overrides"),
    },
    tags=["item2vec", "embeddings", "serving"],
    doc_md=__doc__,
)
def serving_refresh():
    """Make the service serve the version the publish just made CURRENT."""

    @task
    def check_version() -> dict:
        from serving.refresh import check_published

        paths = _config().paths
        return check_published(paths.resolve(paths.publish_root))

    @task
    def reload(checked: dict) -> dict:
        from serving.refresh import request_reload, service_url

        cfg = _config().serving
        return request_reload(service_url(cfg), checked["version"], cfg)

    @task
    def confirm(checked: dict, reloaded: dict) -> dict:
        """The service serves what CURRENT names now (read again: it may have moved)."""
        from serving.refresh import check_published, confirm_served, service_url

        cfg = _config()
        now = check_published(cfg.paths.resolve(cfg.paths.publish_root))
        return confirm_served(service_url(cfg.serving), now["version"])

    checked = check_version()
    confirm(checked, reload(checked))


serving_refresh()
