"""The serving refresh: its steps against a real service, and its DAG with dag.test()."""

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from embedding.core.config import ServingConfig
from serving.app import create_app
from serving.refresh import (
    URL_ENV,
    RefreshError,
    check_published,
    confirm_served,
    request_reload,
)
from tests.test_serving_reload import V1, V2, break_version, serve, set_current, write_version

CFG = ServingConfig(poll_interval_s=0, admin_token_env="TEST_REFRESH_TOKEN")  # no poller


def test_check_published_verifies_current_and_its_checksums(tmp_path: Path) -> None:
    with pytest.raises(RefreshError, match="CURRENT does not exist"):
        check_published(tmp_path)
    write_version(tmp_path, V1)
    assert check_published(tmp_path) == {"version": V1, "n_items": 300, "dim": 16}

    break_version(write_version(tmp_path, V2), "checksum")
    with pytest.raises(RefreshError, match=f"CURRENT names {V2}, which fails its checks"):
        check_published(tmp_path)


def test_reload_and_confirm_move_the_service_to_the_new_version(tmp_path: Path) -> None:
    write_version(tmp_path, V1)
    with serve(create_app(tmp_path, CFG)) as client:
        url = str(client.base_url).rstrip("/")
        write_version(tmp_path, V2, seed=1)  # CURRENT moves; the service does not poll
        checked = check_published(tmp_path)
        reloaded = request_reload(url, checked["version"], CFG)
        confirmed = confirm_served(url, checked["version"], wait_s=5)
    assert (reloaded["version"], reloaded["previous"], reloaded["changed"]) == (V2, V1, True)
    assert confirmed["version"] == V2


def test_a_version_the_service_refuses_fails_the_refresh_with_its_reason(tmp_path: Path) -> None:
    write_version(tmp_path, V1)
    with serve(create_app(tmp_path, CFG)) as client:
        url = str(client.base_url).rstrip("/")
        # checksums match the damaged file: only the service, reading it, finds the problem
        break_version(write_version(tmp_path, V2, make_current=False), "corrupt_parquet")
        set_current(tmp_path, V2)
        with pytest.raises(
            RefreshError, match=f"refused .*{V2}.* and still serves {V1}: .*Parquet"
        ):
            request_reload(url, V2, CFG)
        with pytest.raises(RefreshError, match="still answers"):
            confirm_served(url, V2, wait_s=1)


def test_a_rollback_between_the_check_and_the_reload_is_not_undone(tmp_path: Path) -> None:
    write_version(tmp_path, V1)
    with serve(create_app(tmp_path, CFG)) as client:
        url = str(client.base_url).rstrip("/")
        write_version(tmp_path, V2, seed=1)  # published: CURRENT names V2
        checked = check_published(tmp_path)
        set_current(tmp_path, V1)  # an operator rolls back before the reload step runs
        request_reload(url, checked["version"], CFG)
        served = client.get("/version").json()["version"]
        later = client.get("/version").json()["version"]
    assert checked["version"] == V2
    assert served == later == V1  # CURRENT's, not the version the check saw


def test_no_service_is_a_clear_error() -> None:
    with pytest.raises(RefreshError, match=r"no answer .* is the service up"):
        request_reload("http://127.0.0.1:9", V1, CFG, timeout_s=2)


def test_serving_refresh_dag_runs_end_to_end(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    root = tmp_path / "publish"
    root.mkdir()
    write_version(root, V1)
    conf = yaml.safe_load((ROOT / "conf" / "default.yaml").read_text())
    conf["paths"] = {"publish_root": str(root)}
    conf_path = tmp_path / "conf.yaml"
    conf_path.write_text(yaml.safe_dump(conf))
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("serving_refresh")

    with serve(create_app(root, CFG)) as client:
        monkeypatch.setenv(URL_ENV, str(client.base_url).rstrip("/"))
        write_version(root, V2, seed=1)
        run = dag.test(run_conf={"conf": str(conf_path)})
        served = client.get("/version").json()["version"]

    assert run.state == "success", run.state
    assert served == V2
