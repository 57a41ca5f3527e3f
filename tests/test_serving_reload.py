"""Hot reload, /admin/reload, /health and /version against a real uvicorn server on 127.0.0.1.

The server runs in a thread of the test process (``uvicorn.Server``), so a test can look at
``app.state`` and patch the loader; clients talk to it over a real socket. Versions are small
(300 items: exact search; 1,500 without a stored index: HNSW built at load time).
"""

import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

import serving.reload
from embedding.core.checksum import file_sha256
from embedding.core.config import ServingConfig
from serving.app import create_app
from serving.model import LoadedVersion, load_version
from serving.probe import free_port

DIM = 16
V1 = "20260101-aaaaaaaa"
V2 = "20260102-bbbbbbbb"
V3 = "20260103-cccccccc"
POLL_S = 0.2
SWAP_LIMIT_S = 5.0
TOKEN_ENV = "TEST_SERVING_RELOAD_TOKEN"
CFG = ServingConfig(poll_interval_s=POLL_S, admin_token_env=TOKEN_ENV)


def write_version(
    root: Path,
    version: str,
    n_items: int = 300,
    *,
    make_current: bool = True,
    created_at: datetime | None = None,
    seed: int = 0,
) -> Path:
    """A complete version (Parquet + manifest with sha256) renamed into place, then CURRENT."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_items, DIM)).astype(np.float32)  # (n_items, DIM)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    staging = root / ".tmp" / version
    staging.mkdir(parents=True)
    table = pa.table(
        {
            "item_id": pa.array([f"item_{i:05d}" for i in range(n_items)], pa.string()),
            "vector": pa.array(list(vectors), pa.list_(pa.float32())),
            "market": pa.array([f"m{i % 3}" for i in range(n_items)], pa.string()),
        }
    )
    pq.write_table(table, staging / "item_vectors.parquet")
    manifest = {
        "contract_version": 1,
        "version": version,
        "created_at": (created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "data_interval": {"start": "2025-12-01", "end": version[:8]},
        "dim": DIM,
        "n_items": n_items,
        "files": {"item_vectors.parquet": file_sha256(staging / "item_vectors.parquet")},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest))
    (root / "versions").mkdir(exist_ok=True)
    staging.rename(root / "versions" / version)
    if make_current:
        set_current(root, version)
    return root / "versions" / version


def set_current(root: Path, version: str) -> None:
    tmp = root / "CURRENT.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / "CURRENT")  # readers never see a half-written CURRENT


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port until the block ends."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not shut down"


def wait_for_version(client: httpx.Client, version: str, limit_s: float = SWAP_LIMIT_S) -> float:
    """Seconds until /health names ``version``; fails past ``limit_s``."""
    started = time.monotonic()
    while True:
        response = client.get("/health")
        if response.json().get("version") == version:
            return time.monotonic() - started
        assert time.monotonic() - started < limit_s, f"still {response.json()} after {limit_s} s"
        time.sleep(0.05)


# --- polling ------------------------------------------------------------------------------------


def test_poller_picks_up_new_versions_within_seconds(tmp_path: Path) -> None:
    app = create_app(tmp_path, CFG)
    with serve(app) as client:
        assert client.get("/health").json() == {"status": "no_version"}  # nothing published yet

        write_version(tmp_path, V1)
        assert wait_for_version(client, V1) < SWAP_LIMIT_S
        old = weakref.ref(app.state.loaded)

        write_version(tmp_path, V2, n_items=1500, seed=1)  # no stored index: built at load time
        took_s = wait_for_version(client, V2)

        health = client.get("/health").json()
        similar = client.get("/items/item_01400/similar", params={"k": 3})
    assert took_s < SWAP_LIMIT_S
    assert (health["status"], health["version"], health["n_items"]) == ("ok", V2, 1500)
    assert health["index"] == "built"
    assert similar.status_code == 200 and similar.json()["version"] == V2
    gc.collect()
    assert old() is None  # the replaced version's memory was released


def test_the_version_loaded_at_startup_is_released_by_the_first_swap(tmp_path: Path) -> None:
    # the lifespan's frame lives as long as the app: a reference there to the startup version
    # kept it in memory for good (bench-serve: RSS 1.40x the first load after two swaps)
    write_version(tmp_path, V1)
    app = create_app(tmp_path, CFG)
    with serve(app) as client:
        assert client.get("/health").json()["version"] == V1
        first = weakref.ref(app.state.loaded)
        write_version(tmp_path, V2, seed=1)
        wait_for_version(client, V2)
        gc.collect()
        assert first() is None


def test_no_request_fails_while_versions_swap(tmp_path: Path) -> None:
    write_version(tmp_path, V1)
    write_version(tmp_path, V2, n_items=1500, make_current=False, seed=1)
    app = create_app(tmp_path, CFG)
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer(base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            while not stop.is_set():
                response = http.get("/items/item_00042/similar", params={"k": 5})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["version"])

    with serve(app) as client:
        worker = threading.Thread(target=hammer, args=(str(client.base_url),))
        worker.start()
        try:
            time.sleep(0.3)
            set_current(tmp_path, V2)
            wait_for_version(client, V2)
            time.sleep(0.3)
        finally:
            stop.set()
            worker.join(timeout=15)

    assert statuses and set(statuses) == {200}
    switch = versions.index(V2)
    assert switch > 0 and set(versions[:switch]) == {V1} and set(versions[switch:]) == {V2}


def test_a_search_runs_on_a_searcher_thread_and_never_holds_up_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One search held (as a slow ANN query would be) while others are answered: /health and
    a second item's neighbours come back at once, from the other searcher thread."""
    write_version(tmp_path, V1)
    searched_on: list[str] = []
    held, release = threading.Event(), threading.Event()
    similar = LoadedVersion.similar

    def held_similar(self: LoadedVersion, item_id: str, *args: object, **kwargs: object) -> list:
        searched_on.append(threading.current_thread().name)
        if item_id == "item_00001":
            held.set()
            release.wait(20)
        return similar(self, item_id, *args, **kwargs)

    monkeypatch.setattr(LoadedVersion, "similar", held_similar)
    app = create_app(tmp_path, CFG)
    with serve(app) as client, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, client.base_url.join("/items/item_00001/similar"), timeout=30)
        assert held.wait(10)
        started = time.monotonic()
        health = client.get("/health")
        other = client.get("/items/item_00002/similar", params={"k": 3})
        answered_s = time.monotonic() - started
        release.set()
        slow_response = slow.result(timeout=30)

    assert (health.status_code, other.status_code, slow_response.status_code) == (200, 200, 200)
    assert answered_s < 5  # the held search waits up to 20 s: nothing waited for it
    assert len(searched_on) == 2 and all(name.startswith("searcher") for name in searched_on)
    assert [n["item_id"] for n in other.json()["neighbors"]] == [
        n.item_id for n in load_version(tmp_path).similar("item_00002", 3)
    ]


def test_every_answer_during_swaps_is_wholly_the_old_or_the_new_versions(tmp_path: Path) -> None:
    """Four swaps (CURRENT moving V1 -> V2 -> V3 -> V1 -> V2) under four concurrent clients:
    each answer names one version and holds exactly that version's neighbours; none fails."""
    write_version(tmp_path, V1, n_items=1500, seed=0)
    write_version(tmp_path, V2, n_items=1500, make_current=False, seed=1)
    write_version(tmp_path, V3, n_items=1500, make_current=False, seed=2)
    items = [f"item_{i:05d}" for i in range(0, 1500, 150)]
    expected = {}  # (version, item) -> its answer, from that version loaded on its own
    for version in (V1, V2, V3):
        loaded = load_version(tmp_path, version, CFG)
        for item in items:
            expected[version, item] = [n.item_id for n in loaded.similar(item, 5)]
    app = create_app(tmp_path, CFG)
    answers: list[tuple[int, str | None, str, list[str]]] = []
    stop = threading.Event()

    def hammer(base_url: str, offset: int) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            turn = offset
            while not stop.is_set():
                item = items[turn % len(items)]
                turn += 1
                response = http.get(f"/items/{item}/similar", params={"k": 5})
                body = response.json() if response.status_code == 200 else {}
                ids = [n["item_id"] for n in body.get("neighbors", [])]
                answers.append((response.status_code, body.get("version"), item, ids))

    with serve(app) as client:
        workers = [
            threading.Thread(target=hammer, args=(str(client.base_url), i)) for i in range(4)
        ]
        for worker in workers:
            worker.start()
        try:
            for version in (V2, V3, V1, V2):
                time.sleep(0.3)
                set_current(tmp_path, version)
                wait_for_version(client, version)
            time.sleep(0.3)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=15)

    assert len(answers) > 100
    assert {status for status, *_ in answers} == {200}
    served = {version for _, version, _, _ in answers}
    assert served == {V1, V2, V3}
    mixed = [(v, item, ids) for _, v, item, ids in answers if ids != expected[v, item]]
    assert not mixed, mixed[:3]


def break_version(version_dir: Path, breakage: str) -> str:
    """Damage a published version; returns what the refusal must mention."""
    parquet = version_dir / "item_vectors.parquet"
    manifest_path = version_dir / "manifest.json"
    if breakage == "corrupt_parquet":  # checksum matches the damaged bytes: Parquet itself fails
        parquet.write_bytes(b"PAR1 this is not parquet PAR1")
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["item_vectors.parquet"] = file_sha256(parquet)
        manifest_path.write_text(json.dumps(manifest))
        return "item_vectors.parquet"
    if breakage == "checksum":
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["item_vectors.parquet"] = "0" * 64
        manifest_path.write_text(json.dumps(manifest))
        return "does not match"
    manifest_path.unlink()
    return "manifest.json: missing"


@pytest.mark.parametrize("breakage", ["corrupt_parquet", "checksum", "missing_manifest"])
def test_broken_new_version_is_refused_and_the_old_keeps_serving(
    tmp_path: Path, breakage: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_version(tmp_path, V1)
    expected = break_version(write_version(tmp_path, V2, make_current=False), breakage)
    app = create_app(tmp_path, CFG)
    with serve(app) as client, caplog.at_level(logging.ERROR, logger="serving.app"):
        set_current(tmp_path, V2)
        time.sleep(8 * POLL_S)  # several polls
        health = client.get("/health")
        similar = client.get("/items/item_00001/similar")
        admin = client.post("/admin/reload", params={"version": V2})

        write_version(tmp_path, V3, seed=3)  # a good version after the broken one is served
        wait_for_version(client, V3)

    assert (health.status_code, health.json()["status"], health.json()["version"]) == (
        200,
        "ok",
        V1,
    )
    assert similar.status_code == 200 and similar.json()["version"] == V1
    assert admin.status_code == 409
    assert admin.json()["version"] == V1 and expected in admin.json()["detail"]
    refusals = [r.getMessage() for r in caplog.records if "refusing version" in r.getMessage()]
    assert len(refusals) == 2  # once by the poller (not at every poll), once for the admin call
    assert all(V2 in message and expected in message for message in refusals)


# --- /admin/reload ------------------------------------------------------------------------------


@pytest.fixture
def two_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """V1 current, V2 published beside it; no admin token set."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    write_version(tmp_path, V1)
    write_version(tmp_path, V2, make_current=False, seed=1)
    return tmp_path


def test_admin_reload_from_loopback_needs_no_token(two_versions: Path) -> None:
    tmp_path = two_versions
    app = create_app(tmp_path, CFG.model_copy(update={"poll_interval_s": 0}))  # no poller
    with serve(app) as client:
        to_v2 = client.post("/admin/reload", params={"version": V2})
        served = client.get("/health").json()["version"]
        back = client.post("/admin/reload")  # CURRENT's version
        again = client.post("/admin/reload")

    assert to_v2.status_code == 200
    body = to_v2.json()
    assert (body["version"], body["previous"], body["changed"]) == (V2, V1, True)
    assert 0 < body["load_s"] < SWAP_LIMIT_S
    assert served == V2
    assert (back.json()["version"], back.json()["previous"]) == (V1, V2)
    assert (again.json()["version"], again.json()["changed"]) == (V1, False)


def test_a_version_loaded_on_demand_stays_until_current_moves(two_versions: Path) -> None:
    tmp_path = two_versions
    with serve(create_app(tmp_path, CFG)) as client:  # polling every POLL_S
        assert client.post("/admin/reload", params={"version": V2}).status_code == 200
        time.sleep(5 * POLL_S)
        pinned = client.get("/health").json()["version"]
        write_version(tmp_path, V3, seed=3)
        took_s = wait_for_version(client, V3)
    assert pinned == V2  # the poller did not undo the explicit reload
    assert took_s < SWAP_LIMIT_S


def test_admin_reload_needs_the_token_when_one_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    write_version(tmp_path, V1)
    write_version(tmp_path, V2, make_current=False, seed=1)
    app = create_app(tmp_path, CFG.model_copy(update={"poll_interval_s": 0}))
    with serve(app) as client:
        missing = client.post("/admin/reload", params={"version": V2})
        wrong = client.post(
            "/admin/reload", params={"version": V2}, headers={"Authorization": "Bearer nope"}
        )
        served = client.get("/health").json()["version"]
        right = client.post(
            "/admin/reload",
            params={"version": V2},
            headers={"Authorization": "Bearer s3cret-token"},
        )

    assert (missing.status_code, wrong.status_code) == (403, 403)
    assert "Bearer" in missing.json()["detail"]
    assert served == V1
    assert right.status_code == 200 and right.json()["version"] == V2


def test_admin_reload_refuses_remote_clients_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    write_version(tmp_path, V1)
    with TestClient(create_app(tmp_path, CFG)) as test_client:  # client host "testclient"
        response = test_client.post("/admin/reload")
    assert response.status_code == 403
    assert "loopback" in response.json()["detail"]


@pytest.mark.parametrize(
    "header",
    [
        {"Forwarded": "for=203.0.113.5;proto=https"},
        {"X-Real-IP": "203.0.113.5"},
        {"X-Forwarded-For": "127.0.0.1"},  # even one claiming loopback: a proxy added it
    ],
)
def test_without_a_token_a_proxied_loopback_request_is_refused_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: dict[str, str]
) -> None:
    """A reverse proxy on the same host makes every client loopback; it adds one of these."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    write_version(tmp_path, V1)
    write_version(tmp_path, V2, make_current=False, seed=1)
    app = create_app(tmp_path, CFG.model_copy(update={"poll_interval_s": 0}))
    with serve(app) as client:
        proxied = client.post("/admin/reload", params={"version": V2}, headers=header)
        served = client.get("/health").json()["version"]
        direct = client.post("/admin/reload", params={"version": V2})
    assert proxied.status_code == 403, proxied.text
    assert "proxy" in proxied.json()["detail"]
    assert served == V1
    assert direct.status_code == 200  # the same client, direct: allowed


def test_the_service_refuses_to_bind_a_public_address_without_an_admin_token(
    tmp_path: Path,
) -> None:
    write_version(tmp_path, V1)
    env = {k: v for k, v in os.environ.items() if k != "EMBEDDING_ADMIN_TOKEN"}
    command = [sys.executable, "-m", "serving", "--publish-root", str(tmp_path),
               "--host", "0.0.0.0", "--port", str(free_port())]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert code == 2, f"the service started on 0.0.0.0 without a token (exit {code})"
    assert "EMBEDDING_ADMIN_TOKEN" in stderr and "0.0.0.0" in stderr


@pytest.mark.parametrize("version", ["../x", "..", "/etc/passwd", ".hidden", "a/b", "a\\b"])
def test_admin_reload_rejects_a_path_before_reading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    write_version(tmp_path, V1)
    app = create_app(tmp_path, CFG.model_copy(update={"poll_interval_s": 0}))
    calls: list[object] = []
    real_load = serving.reload.load_version
    with serve(app) as client:
        monkeypatch.setattr(
            serving.reload, "load_version", lambda *a, **k: calls.append(a) or real_load(*a, **k)
        )
        response = client.post("/admin/reload", params={"version": version})
        served = client.get("/health").json()["version"]
    assert response.status_code == 422
    assert calls == []  # refused before anything was read
    assert served == V1


# --- /health and /version -----------------------------------------------------------------------


def test_health_is_stale_past_the_age_limit(tmp_path: Path) -> None:
    write_version(tmp_path, V1, created_at=datetime.now(UTC) - timedelta(hours=3))
    strict = CFG.model_copy(update={"max_version_age_hours": 1.0, "poll_interval_s": 0})
    with serve(create_app(tmp_path, strict)) as client:
        stale = client.get("/health")
    no_limit = CFG.model_copy(update={"max_version_age_hours": None, "poll_interval_s": 0})
    with serve(create_app(tmp_path, no_limit)) as client:
        fine = client.get("/health")

    assert stale.status_code == 503
    body = stale.json()
    assert (body["status"], body["version"], body["index"]) == ("stale", V1, "exact")
    assert 3 * 3600 - 60 < body["age_s"] < 3 * 3600 + 60
    assert fine.status_code == 200 and fine.json()["status"] == "ok"


def test_version_describes_the_served_version(tmp_path: Path) -> None:
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    write_version(tmp_path, V1, created_at=created)
    before = datetime.now(UTC)
    with serve(create_app(tmp_path, CFG)) as client:
        response = client.get("/version")
        health = client.get("/health").json()

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == V1
    assert datetime.fromisoformat(body["created_at"]) == created
    assert body["data_interval"] == {"start": "2025-12-01", "end": "20260101"}
    assert before <= datetime.fromisoformat(body["loaded_at"]) <= datetime.now(UTC)
    assert (body["n_items"], body["dim"], body["index"]) == (300, DIM, "exact")
    assert health["status"] == "ok" and 290 < health["age_s"] < 400


def test_version_without_a_loaded_version_is_503(tmp_path: Path) -> None:
    with serve(create_app(tmp_path, CFG)) as client:
        response = client.get("/version")
    assert response.status_code == 503
