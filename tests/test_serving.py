"""The neighbour service on a small real publish root: real Parquet, real index, real HTTP.

The big version holds 2,000 items in 20 tight, mutually orthogonal clusters (the market names
the cluster), so an item's nearest neighbours are exactly its cluster mates; the small version
(300 items) takes the exact-search path.
"""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from embedding import PROJECT_ROOT
from embedding.core.checksum import file_sha256
from embedding.core.config import ServingConfig
from serving.app import create_app, reload
from serving.model import EXACT_SEARCH_MAX_ITEMS, VersionLoadError, load_version
from serving.probe import free_port

DIM = 32
BIG_VERSION = "20260108-1a2b3c4d"
SMALL_VERSION = "20260101-0badcafe"
POPULAR_ITEM = "item_01234"  # most n_events in BIG_VERSION; cluster 1234 % 20 = 14
SLASH_ITEM = "hotel/7"  # an id with '/' must still be reachable (sent as %2F)
MAX_K = 50
CFG = ServingConfig(max_k=MAX_K)


def clustered_items(
    n_items: int, n_clusters: int, seed: int
) -> tuple[list[str], np.ndarray, list[str | None], list[int]]:
    """ids, unit vectors (n_items, DIM), markets, n_events; item i is in cluster i % n_clusters."""
    rng = np.random.default_rng(seed)
    centers, _ = np.linalg.qr(rng.normal(size=(DIM, n_clusters)))  # (DIM, C) orthonormal columns
    cluster = np.arange(n_items) % n_clusters  # (N,)
    vectors = centers.T[cluster] + 0.05 * rng.normal(size=(n_items, DIM))  # (N, DIM)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item_{i:05d}" for i in range(n_items)]
    markets: list[str | None] = [f"m{c:02d}" for c in cluster]
    n_events = [int(i % 50) + 1 for i in range(n_items)]
    return ids, vectors.astype(np.float32), markets, n_events


def write_version(
    root: Path,
    version: str,
    ids: list[str],
    vectors: np.ndarray,
    markets: list[str | None],
    n_events: list[int],
    *,
    make_current: bool = True,
    **manifest_overrides: object,
) -> Path:
    """Publish like CONTRACTS §2: Parquet + manifest with its sha256, then CURRENT."""
    version_dir = root / "versions" / version
    version_dir.mkdir(parents=True)
    table = pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "vector": pa.array(list(vectors), pa.list_(pa.float32())),
            "market": pa.array(markets, pa.string()),
            "n_events": pa.array(n_events, pa.int64()),
            "is_cold_start": pa.array([False] * len(ids), pa.bool_()),
        }
    )
    pq.write_table(table, version_dir / "item_vectors.parquet")
    manifest = {
        "contract_version": 1,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),  # fresh: /health ok
        "dim": int(vectors.shape[1]),
        "n_items": len(ids),
        "files": {"item_vectors.parquet": file_sha256(version_dir / "item_vectors.parquet")},
        "metrics": {"hr@10": 0.5},
        **manifest_overrides,
    }
    (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if make_current:
        (root / "CURRENT").write_text(version + "\n")
    return version_dir


@pytest.fixture(scope="module")
def publish_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("publish")
    ids, vectors, markets, n_events = clustered_items(2000, 20, seed=0)
    ids[7] = SLASH_ITEM
    n_events[1234] = 10_000
    write_version(root, BIG_VERSION, ids, vectors, markets, n_events)
    ids, vectors, markets, n_events = clustered_items(300, 3, seed=1)
    markets = [None if m == "m00" else m for m in markets]  # market is nullable
    write_version(root, SMALL_VERSION, ids, vectors, markets, n_events, make_current=False)
    return root


@pytest.fixture(scope="module")
def client(publish_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(publish_root, CFG)) as test_client:
        yield test_client


# --- (a) the app through TestClient -------------------------------------------------------------


def test_health_names_the_current_version(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["version"], body["n_items"], body["dim"]) == (
        "ok",
        BIG_VERSION,
        2000,
        DIM,
    )
    assert 0 <= body["age_s"] < 3600 and body["index"] == "built"


@pytest.mark.parametrize(
    ("item_id", "k"), [("item_00000", 10), (POPULAR_ITEM, 1), ("item_01999", 50)]
)
def test_similar_returns_cluster_mates_best_first(client: TestClient, item_id: str, k: int) -> None:
    response = client.get(f"/items/{item_id}/similar", params={"k": k})

    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["item_id"], body["k"]) == (BIG_VERSION, item_id, k)
    neighbors = body["neighbors"]
    assert len(neighbors) == k
    assert item_id not in {n["item_id"] for n in neighbors}
    query_market = f"m{int(item_id[-5:]) % 20:02d}"
    assert {n["market"] for n in neighbors} == {query_market}
    scores = [n["score"] for n in neighbors]
    assert scores == sorted(scores, reverse=True)
    assert 0.9 < scores[-1] <= scores[0] <= 1.0 + 1e-6


def test_default_k_is_ten(client: TestClient) -> None:
    assert len(client.get("/items/item_00003/similar").json()["neighbors"]) == 10


def test_item_id_with_a_slash_is_reachable(client: TestClient) -> None:
    response = client.get("/items/hotel%2F7/similar", params={"k": 3})
    assert response.status_code == 200
    assert response.json()["item_id"] == SLASH_ITEM
    assert {n["market"] for n in response.json()["neighbors"]} == {"m07"}


def test_unknown_item_is_a_json_404_naming_it(client: TestClient) -> None:
    response = client.get("/items/nope/similar")
    assert response.status_code == 404
    assert response.json() == {"detail": f"unknown item_id 'nope' in version {BIG_VERSION}"}


@pytest.mark.parametrize("k", ["0", "-1", "ten"])
def test_k_out_of_bounds_is_422(client: TestClient, k: str) -> None:
    response = client.get("/items/item_00000/similar", params={"k": k})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]


def test_k_above_the_limit_is_capped(client: TestClient) -> None:
    response = client.get("/items/item_00000/similar", params={"k": MAX_K + 1})
    assert response.status_code == 200
    assert response.json()["k"] == MAX_K == len(response.json()["neighbors"])


def test_without_current_the_app_starts_and_answers_503_without_naming_its_folder(
    tmp_path: Path,
) -> None:
    with TestClient(create_app(tmp_path, CFG)) as test_client:
        health = test_client.get("/health")
        similar = test_client.get("/items/item_00000/similar")
    assert (health.status_code, health.json()) == (503, {"status": "no_version"})
    assert similar.status_code == 503 and int(similar.headers["Retry-After"]) >= 1
    assert "nothing is published yet" in similar.json()["detail"]
    assert str(tmp_path) not in similar.text  # anonymous clients never see the publish root


def test_reload_swaps_the_served_version(publish_root: Path) -> None:
    app = create_app(publish_root, CFG)
    with TestClient(app) as test_client:
        before = app.state.loaded
        reload(app, SMALL_VERSION)
        health = test_client.get("/health").json()
    assert before.version == BIG_VERSION
    assert (health["version"], health["n_items"]) == (SMALL_VERSION, 300)


# --- the model: ANN against brute force, exact path ---------------------------------------------


def test_hnsw_answers_match_brute_force(publish_root: Path) -> None:
    loaded = load_version(publish_root, cfg=CFG)
    assert not loaded.is_exact
    all_scores = loaded.vectors @ loaded.vectors.T  # (N, N)
    np.fill_diagonal(all_scores, -np.inf)
    for row in range(0, loaded.n_items, 37):
        expected = [loaded.ids[r] for r in np.argsort(-all_scores[row], kind="stable")[:10]]
        assert [n.item_id for n in loaded.similar(loaded.ids[row], 10)] == expected


def test_small_version_is_searched_exactly(publish_root: Path) -> None:
    loaded = load_version(publish_root, SMALL_VERSION, CFG)

    assert loaded.is_exact and loaded.n_items < EXACT_SEARCH_MAX_ITEMS
    neighbors = loaded.similar("item_00000", 5)  # cluster 0: market null
    assert [n.market for n in neighbors] == [None] * 5
    assert all(int(n.item_id[-5:]) % 3 == 0 for n in neighbors)
    assert len(loaded.similar("item_00001", 1000)) == 299  # everything but the query
    with pytest.raises(KeyError):
        loaded.similar("nope", 5)


# --- (c) broken versions are refused ------------------------------------------------------------


def small_items(n_items: int = 20) -> tuple[list[str], np.ndarray, list[str | None], list[int]]:
    return clustered_items(n_items, 2, seed=2)


def test_changed_parquet_fails_the_checksum(tmp_path: Path) -> None:
    ids, vectors, markets, n_events = small_items()
    version_dir = write_version(tmp_path, SMALL_VERSION, ids, vectors, markets, n_events)
    table = pq.read_table(version_dir / "item_vectors.parquet")
    pq.write_table(table.slice(0, 19), version_dir / "item_vectors.parquet")  # still valid Parquet

    with pytest.raises(VersionLoadError, match=r"sha256 .* does not match manifest"):
        load_version(tmp_path, cfg=CFG)


def test_app_refuses_to_start_on_a_broken_current(tmp_path: Path) -> None:
    ids, vectors, markets, n_events = small_items()
    version_dir = write_version(tmp_path, SMALL_VERSION, ids, vectors, markets, n_events)
    with (version_dir / "item_vectors.parquet").open("ab") as handle:
        handle.write(b"junk")

    with pytest.raises(VersionLoadError, match="sha256"), TestClient(create_app(tmp_path, CFG)):
        pass


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("unnormalised", r"20 of 20 vectors are not L2-normalised"),
        ("nan", r"1 of 20 vectors are not L2-normalised"),
        ("duplicate", r"duplicate item_id rows \(e.g. \['item_00000'\]\)"),
        ("dim", r"row 0 has a vector of length 32, but manifest.json says dim=8"),
        ("n_items", r"20 rows but manifest.json says n_items=21"),
        ("no_checksum", r"'files' does not list item_vectors.parquet"),
    ],
)
def test_inconsistent_versions_are_refused(tmp_path: Path, breakage: str, message: str) -> None:
    ids, vectors, markets, n_events = small_items()
    overrides: dict[str, object] = {}
    if breakage == "unnormalised":
        vectors = vectors * 2
    elif breakage == "nan":
        vectors[3, 0] = np.nan
    elif breakage == "duplicate":
        ids[5] = ids[0]
    elif breakage == "dim":
        overrides["dim"] = 8
    elif breakage == "n_items":
        overrides["n_items"] = 21
    elif breakage == "no_checksum":
        overrides["files"] = {}
    write_version(tmp_path, SMALL_VERSION, ids, vectors, markets, n_events, **overrides)

    with pytest.raises(VersionLoadError, match=message):
        load_version(tmp_path, cfg=CFG)


def test_missing_publish_root_and_version_are_named(tmp_path: Path) -> None:
    with pytest.raises(VersionLoadError, match="does not exist"):
        load_version(tmp_path / "nowhere", cfg=CFG)
    (tmp_path / "CURRENT").write_text("20260101-deadbeef\n")
    with pytest.raises(VersionLoadError, match="version 20260101-deadbeef not found"):
        load_version(tmp_path, cfg=CFG)
    (tmp_path / "CURRENT").write_text("../../etc\n")
    with pytest.raises(VersionLoadError, match="is not a version id"):
        load_version(tmp_path, cfg=CFG)


# --- (b) a real socket; (d) the probe -----------------------------------------------------------


def run_module(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_service_answers_over_a_real_socket(publish_root: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                "--publish-root",
                str(publish_root),
                "--port",
                str(port),
            ],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                deadline = time.monotonic() + 30
                while True:
                    assert service.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    try:
                        if http.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass  # not listening yet
                    time.sleep(0.1)
                response = http.get(f"/items/{POPULAR_ITEM}/similar", params={"k": 4})
        finally:
            service.terminate()
            service.wait(timeout=10)

    assert response.status_code == 200
    assert [n["market"] for n in response.json()["neighbors"]] == ["m14"] * 4
    assert service.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert "Finished server process" in log_path.read_text()  # ... after a graceful shutdown


def test_cli_refuses_a_missing_publish_root(tmp_path: Path) -> None:
    result = run_module("serving", "--publish-root", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            f"error: publish root {tmp_path / 'nowhere'} does not exist; "
            "pass the folder the pipeline publishes to"
        )
    ]


def test_probe_shows_the_most_popular_items_neighbours(publish_root: Path) -> None:
    result = run_module("serving.probe", "--publish-root", str(publish_root))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"version  {BIG_VERSION}"
    assert lines[1] == f"query    {POPULAR_ITEM}  (market m14)"
    assert lines[3].split() == ["rank", "item_id", "market", "score"]
    rows = [line.split() for line in lines[4:]]
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert {row[2] for row in rows} == {"m14"}
    assert POPULAR_ITEM not in {row[1] for row in rows}


def test_probe_reports_a_service_that_fails_to_start(tmp_path: Path) -> None:
    ids, vectors, markets, n_events = small_items()
    version_dir = write_version(tmp_path, SMALL_VERSION, ids, vectors, markets, n_events)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"]["item_vectors.parquet"] = "0" * 64
    (version_dir / "manifest.json").write_text(json.dumps(manifest))

    result = run_module("serving.probe", "--publish-root", str(tmp_path))

    assert result.returncode == 1
    assert result.stdout == ""
    assert "service exited with code 3 before it was healthy" in result.stderr
    assert "does not match manifest.json" in result.stderr  # the service's own log line
