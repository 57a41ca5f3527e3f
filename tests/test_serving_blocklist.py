"""The blocklist (delisted items) and the cold-start flag, against a real uvicorn on 127.0.0.1.

The blocklist file is edited while the service runs: a change is picked up at the next poll
without a new version, a bad file is refused with the old list kept, and no answer of any
neighbour route ever holds a blocked id.
"""

import json
import logging
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.core.checksum import file_sha256
from embedding.core.config import ServingConfig
from serving.app import create_app
from serving.blocklist import BlocklistError, BlocklistWatcher, read_blocklist
from tests.test_serving_reload import CFG, POLL_S, V1, serve, write_version

WAIT_S = 5.0


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def similar_ids(client: httpx.Client, item_id: str, k: int = 10) -> list[str]:
    response = client.get(f"/items/{item_id}/similar", params={"k": k})
    assert response.status_code == 200, response.text
    return [n["item_id"] for n in response.json()["neighbors"]]


def wait_until(check, limit_s: float = WAIT_S) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit_s, f"not true after {limit_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


# --- reading the file ---------------------------------------------------------------------------


def test_text_blocklist_skips_blanks_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "blocked.txt"
    path.write_text("# delisted on 2026-01-02\nitem_1\n\n  item_2  \r\nitem_1\n")

    assert read_blocklist(path) == {"item_1", "item_2"}


def test_parquet_blocklist_reads_the_item_id_column(tmp_path: Path) -> None:
    path = tmp_path / "blocked.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "reason": ["fraud", "closed"]}), path)

    assert read_blocklist(path) == {"a", "b"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("long.txt", "ok\n" + "x" * 300 + "\n", "line 2: 300 characters"),
        ("binary.txt", b"\xff\xfe\x00bad", "not UTF-8"),
        ("nocol.parquet", pa.table({"id": ["a"]}), "'item_id'"),
        ("typed.parquet", pa.table({"item_id": [1, 2]}), "expected string"),
        ("nulls.parquet", pa.table({"item_id": ["a", None]}), "null item_id"),
    ],
)
def test_bad_blocklist_files_are_refused_naming_the_problem(
    tmp_path: Path, name: str, content: object, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)

    with pytest.raises(BlocklistError, match=message) as info:
        read_blocklist(path)
    assert str(path) in str(info.value)


def test_watcher_keeps_the_old_list_when_the_file_goes_bad_or_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "blocked.txt"
    path.write_text("a\nb\n")
    watcher = BlocklistWatcher(path)
    assert watcher.check() and watcher.current.ids == {"a", "b"}
    assert not watcher.check()  # unchanged file: not reread

    with caplog.at_level(logging.ERROR, logger="serving.blocklist"):
        path.write_bytes(b"\xff\xfe")
        assert not watcher.check() and not watcher.check()
        path.unlink()
        assert not watcher.check()
    assert watcher.current.ids == {"a", "b"}
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(refusals) == 2  # each problem logged once, not at every check
    assert "not UTF-8" in refusals[0] and "does not exist" in refusals[1]

    write_atomically(path, "")  # an empty file clears the list
    assert watcher.check() and len(watcher.current) == 0


# --- the service --------------------------------------------------------------------------------


def test_blocklist_filters_every_route_and_reloads_without_a_new_version(tmp_path: Path) -> None:
    root, blocklist = tmp_path / "publish", tmp_path / "blocked.txt"
    root.mkdir()
    write_version(root, V1, n_items=1500)  # HNSW search, so the fetch widens past blocked ids
    blocklist.write_text("")  # configured and empty
    app = create_app(root, CFG.model_copy(update={"blocklist_path": str(blocklist)}))
    with serve(app) as client:
        query = "item_00042"
        before = similar_ids(client, query, 30)
        assert client.get("/version").json()["blocklist_items"] == 0

        blocked = before[:20]
        write_atomically(blocklist, "# delisted\n" + "\n".join(blocked) + "\n")
        took_s = wait_until(lambda: client.get("/version").json()["blocklist_items"] == 20)

        after = similar_ids(client, query, 10)
        mean = client.post("/similar", json={"item_ids": [query, "item_00043"], "k": 10})
        batch = client.post("/similar/batch", json={"item_ids": [query, before[25]], "k": 10})
        blocked_item = client.get(f"/items/{blocked[0]}").json()
        free_item = client.get(f"/items/{query}").json()
        metrics = client.get("/metrics").text
        served_version = client.get("/health").json()["version"]

        write_atomically(blocklist, blocked[0] + "\n")  # un-block all but one
        wait_until(lambda: client.get("/version").json()["blocklist_items"] == 1)
        unblocked = similar_ids(client, query, 10)

        blocklist.write_bytes(b"\xff\xfe not text")  # a bad file: the list in force stays
        time.sleep(6 * POLL_S)
        still = client.get("/version").json()["blocklist_items"]
        admin = client.post("/admin/reload")  # rereads the file; still bad, still kept

    assert took_s < WAIT_S and served_version == V1  # no new version was needed
    assert after == before[20:30]  # the next ten, in order: the fetch widened
    assert mean.status_code == 200
    assert not set(blocked) & {n["item_id"] for n in mean.json()["neighbors"]}
    assert len(mean.json()["neighbors"]) == 10
    for result in batch.json()["results"]:
        assert len(result["neighbors"]) == 10
        assert not set(blocked) & {n["item_id"] for n in result["neighbors"]}
    assert blocked_item["is_blocked"] is True and free_item["is_blocked"] is False
    assert "embedding_blocklist_items 20" in metrics
    assert unblocked == before[1:11]
    assert still == 1
    assert admin.status_code == 200 and admin.json()["blocklist_items"] == 1


@pytest.mark.parametrize("start_with", ["missing", "not_utf8", "too_long_id"])
def test_a_blocklist_unreadable_at_start_closes_the_item_routes_until_it_is_read(
    tmp_path: Path, start_with: str
) -> None:
    """Fail closed: without the configured list an answer could hold a blocked item."""
    root, blocklist = tmp_path / "publish", tmp_path / "blocked.txt"
    root.mkdir()
    write_version(root, V1, n_items=200)
    if start_with == "not_utf8":
        blocklist.write_bytes(b"\xff\xfe")
    elif start_with == "too_long_id":
        blocklist.write_text("x" * 1000 + "\n")
    query = "item_00042"
    app = create_app(root, CFG.model_copy(update={"blocklist_path": str(blocklist)}))
    with serve(app) as client:
        closed = [
            client.get(f"/items/{query}/similar"),
            client.get(f"/items/{query}"),
            client.post("/similar", json={"item_ids": [query]}),
            client.post("/similar/batch", json={"item_ids": [query]}),
        ]
        health = client.get("/health")
        write_atomically(blocklist, "item_00007\n")
        wait_until(lambda: client.get("/health").status_code == 200)
        blocked = client.get(f"/items/{query}/similar", params={"k": 199})
        blocked_item = client.get("/items/item_00007").json()

    for response in closed:
        assert response.status_code == 503, (response.request.url, response.text)
        assert int(response.headers["Retry-After"]) >= 1
        assert "blocklist" in response.json()["detail"]
        assert str(tmp_path) not in response.text  # the file's name, never its path
    assert health.status_code == 503 and health.json()["status"] == "blocklist_unavailable"
    assert "blocked.txt" in health.json()["reason"] and str(tmp_path) not in health.text
    assert blocked.status_code == 200
    assert "item_00007" not in {n["item_id"] for n in blocked.json()["neighbors"]}
    assert blocked_item["is_blocked"] is True


def test_service_without_a_blocklist_reports_none(tmp_path: Path) -> None:
    write_version(tmp_path, V1)
    with serve(create_app(tmp_path, ServingConfig(poll_interval_s=0))) as client:
        info = client.get("/version").json()
        metrics = client.get("/metrics").text
    assert info["blocklist_items"] == 0 and info["blocklist_loaded_at"] is None
    assert "embedding_blocklist_items" not in metrics


def test_get_item_reports_the_cold_start_flag_when_the_version_has_one(tmp_path: Path) -> None:
    version_dir = write_version(tmp_path, V1)
    parquet = version_dir / "item_vectors.parquet"
    table = pq.read_table(parquet)
    flags = np.arange(table.num_rows) % 7 == 0  # every 7th item inferred for cold start
    pq.write_table(table.append_column("is_cold_start", pa.array(flags)), parquet)
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["item_vectors.parquet"] = file_sha256(parquet)
    manifest_path.write_text(json.dumps(manifest))

    with serve(create_app(tmp_path, ServingConfig(poll_interval_s=0))) as client:
        cold = client.get("/items/item_00007").json()
        warm = client.get("/items/item_00008").json()
    assert cold["is_cold_start"] is True and warm["is_cold_start"] is False


def test_get_item_cold_start_is_null_when_the_version_has_no_flag(tmp_path: Path) -> None:
    write_version(tmp_path, V1)
    with serve(create_app(tmp_path, ServingConfig(poll_interval_s=0))) as client:
        item = client.get("/items/item_00007").json()
    assert item["is_cold_start"] is None
