"""The prebuilt ANN index: stored with a version, checked on load, and the two-step search.

Real FAISS HNSW indexes over small clustered vectors (a few thousand items, so that the HNSW path,
not exact search, answers), real Parquet versions written by ``publish_version``.
"""

import gc
import json
from collections.abc import Collection
from pathlib import Path

import faiss
import numpy as np
import pytest

from embedding.core.checksum import file_sha256
from embedding.core.config import ServingConfig
from embedding.vectors.ann_index import (
    EXACT_SEARCH_MAX_ITEMS,
    INDEX_FILE,
    INDEX_META_FILE,
    AnnIndexError,
    build_index,
    load_index,
    save_index,
    write_version_index,
)
from embedding.vectors.item_vectors import ItemVectors
from embedding.vectors.parquet_io import VECTORS_FILE, read_vectors
from embedding.vectors.publish import MANIFEST, VERSIONS, publish_version
from serving.model import LoadedVersion, VersionLoadError, load_version

DIM = 32
CFG = ServingConfig()
VERSION = "20260108-1a2b3c4d"
N_ITEMS = 2000  # above EXACT_SEARCH_MAX_ITEMS: the HNSW path answers
N_CLUSTERS = 20


def mixture(
    n_items: int, n_clusters: int, spread: float, seed: int, n_queries: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors (n_items, DIM), cluster of each, queries (n_queries, DIM)): unit rows drawn
    from one mixture of Gaussians, the queries from the same mixture but not in the index."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, DIM))  # (C, DIM)
    cluster = rng.integers(n_clusters, size=n_items + n_queries)  # (N + Q,)
    points = centers[cluster] + spread * rng.normal(size=(n_items + n_queries, DIM))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    points = points.astype(np.float32)
    return points[:n_items], cluster[:n_items], points[n_items:]


def markets_of(cluster: np.ndarray) -> list[str | None]:
    """Clusters 0-11 'north' (> EXACT_SEARCH_MAX_ITEMS items: searched through the index),
    12-19 'south'; every 97th item 'island' (a rare market: searched exactly)."""
    markets: list[str | None] = ["north" if c < 12 else "south" for c in cluster]
    for row in range(0, len(markets), 97):
        markets[row] = "island"
    return markets


def publish(
    root: Path, vectors: np.ndarray, markets: list[str | None], *, with_index: bool
) -> Path:
    """A version published by ``publish_version``, then (as the publish stage will) its index
    written from the Parquet rows and its two files added to the manifest's checksums."""
    ids = [f"item_{i:05d}" for i in range(len(vectors))]
    item_vectors = ItemVectors(ids=ids, vectors=vectors, counts=np.ones(len(ids), np.int64))
    publish_version(root, VERSION, item_vectors, dict(zip(ids, markets, strict=True)), {})
    version_dir = root / VERSIONS / VERSION
    if with_index:
        manifest = json.loads((version_dir / MANIFEST).read_text())
        for name, path in write_version_index(version_dir, CFG).items():
            manifest["files"][name] = file_sha256(path)
        (version_dir / MANIFEST).write_text(json.dumps(manifest))
    return version_dir


def brute_force(
    loaded: LoadedVersion,
    query: np.ndarray,
    k: int,
    market: str | None = None,
    drop: Collection[str] = (),
) -> list[str]:
    scores = loaded.vectors @ query  # (N,)
    rows = [
        r
        for r in np.argsort(-scores, kind="stable")
        if loaded.ids[r] not in drop and (market is None or loaded.markets[r] == market)
    ]
    return [loaded.ids[r] for r in rows[:k]]


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    vectors, cluster, _ = mixture(N_ITEMS, N_CLUSTERS, spread=0.3, seed=0)
    return vectors, cluster


@pytest.fixture(scope="module")
def prebuilt_root(
    tmp_path_factory: pytest.TempPathFactory, clustered: tuple[np.ndarray, np.ndarray]
) -> Path:
    vectors, cluster = clustered
    root = tmp_path_factory.mktemp("publish")
    publish(root, vectors, markets_of(cluster), with_index=True)
    return root


@pytest.fixture(scope="module")
def loaded(prebuilt_root: Path) -> LoadedVersion:
    return load_version(prebuilt_root, cfg=CFG)


# --- the index files ---------------------------------------------------------------------------


def test_saved_and_loaded_index_gives_the_same_neighbours(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    vectors, _ = clustered
    built = build_index(vectors, CFG)
    paths = save_index(built, tmp_path, N_ITEMS, DIM, CFG)
    loaded_index = load_index(tmp_path, N_ITEMS, DIM, CFG)

    assert paths == {INDEX_FILE: tmp_path / INDEX_FILE, INDEX_META_FILE: tmp_path / INDEX_META_FILE}
    meta = json.loads(paths[INDEX_META_FILE].read_text())
    assert {k: meta[k] for k in ("library", "space", "M", "ef_construction", "n_items", "dim")} == {
        "library": "faiss",
        "space": "ip",
        "M": CFG.hnsw_m,
        "ef_construction": CFG.hnsw_ef_construction,
        "n_items": N_ITEMS,
        "dim": DIM,
    }
    assert meta["build_s"] >= 0
    queries = vectors[::50]
    built_scores, built_labels = built.search(queries, 10)
    loaded_scores, loaded_labels = loaded_index.search(queries, 10)
    np.testing.assert_array_equal(loaded_labels, built_labels)
    np.testing.assert_array_equal(loaded_scores, built_scores)


def test_deterministic_builds_give_byte_identical_files(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    vectors, _ = clustered
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        save_index(
            build_index(vectors, CFG, deterministic=True), tmp_path / name, N_ITEMS, DIM, CFG
        )

    first, second = ((tmp_path / name / INDEX_FILE).read_bytes() for name in ("a", "b"))
    assert first == second


def test_a_folder_without_an_index_loads_none_and_half_an_index_is_refused(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    assert load_index(tmp_path, N_ITEMS, DIM, CFG) is None
    vectors, _ = clustered
    save_index(build_index(vectors, CFG), tmp_path, N_ITEMS, DIM, CFG)
    (tmp_path / INDEX_META_FILE).unlink()
    with pytest.raises(AnnIndexError, match=rf"{INDEX_META_FILE} does not exist"):
        load_index(tmp_path, N_ITEMS, DIM, CFG)


@pytest.fixture(scope="module")
def saved_index(
    tmp_path_factory: pytest.TempPathFactory, clustered: tuple[np.ndarray, np.ndarray]
) -> Path:
    folder = tmp_path_factory.mktemp("index")
    save_index(build_index(clustered[0], CFG), folder, N_ITEMS, DIM, CFG)
    return folder


@pytest.mark.parametrize(
    ("n_items", "dim", "message"),
    [
        (N_ITEMS + 1, DIM, rf"{INDEX_META_FILE}: n_items=2000, but the version has n_items=2001"),
        (N_ITEMS, 16, rf"{INDEX_META_FILE}: dim=32, but the version has dim=16"),
    ],
)
def test_load_refuses_an_index_of_other_vectors(
    saved_index: Path, n_items: int, dim: int, message: str
) -> None:
    with pytest.raises(AnnIndexError, match=message):
        load_index(saved_index, n_items, dim, CFG)


def test_load_refuses_a_header_that_disagrees_with_its_json(
    tmp_path: Path, saved_index: Path
) -> None:
    (tmp_path / INDEX_FILE).write_bytes((saved_index / INDEX_FILE).read_bytes())
    meta = json.loads((saved_index / INDEX_META_FILE).read_text())
    (tmp_path / INDEX_META_FILE).write_text(json.dumps({**meta, "dim": 16}))

    with pytest.raises(AnnIndexError, match=rf"{INDEX_FILE}: header says 32-dim vectors"):
        load_index(tmp_path, N_ITEMS, 16, CFG)


@pytest.mark.parametrize("keep_bytes", [40, 200_000])
def test_load_refuses_a_truncated_index(tmp_path: Path, saved_index: Path, keep_bytes: int) -> None:
    (tmp_path / INDEX_FILE).write_bytes((saved_index / INDEX_FILE).read_bytes()[:keep_bytes])
    (tmp_path / INDEX_META_FILE).write_text((saved_index / INDEX_META_FILE).read_text())

    with pytest.raises(AnnIndexError, match=rf"{INDEX_FILE}: {keep_bytes} bytes, .*truncated"):
        load_index(tmp_path, N_ITEMS, DIM, CFG)


def test_recall_at_10_against_exact_search_on_a_mixture_of_gaussians() -> None:
    vectors, _, queries = mixture(5000, 50, spread=0.6, seed=3, n_queries=300)
    index = build_index(vectors, CFG)

    _, found = index.search(queries, 10)  # (Q, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]  # (Q, 10)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.95


# --- loading a version -------------------------------------------------------------------------


def test_a_version_with_a_prebuilt_index_loads_it(loaded: LoadedVersion) -> None:
    assert (loaded.index_source, loaded.is_exact) == ("prebuilt", False)
    assert loaded.index_load_s >= 0
    for row in range(0, N_ITEMS, 101):
        query = loaded.vectors[row]
        expected = brute_force(loaded, query, 10, drop={loaded.ids[row]})
        assert [n.item_id for n in loaded.similar(loaded.ids[row], 10)] == expected


def test_a_prebuilt_version_serves_the_index_own_vectors_equal_to_the_file(
    prebuilt_root: Path, loaded: LoadedVersion
) -> None:
    from_file, _ = read_vectors(prebuilt_root / VERSIONS / VERSION / VECTORS_FILE)

    assert np.array_equal(loaded.vectors, from_file.vectors)  # every row, bit for bit
    assert not loaded.vectors.flags.writeable
    # no second copy: the rows are the index's storage, which the array keeps alive
    view = loaded.vectors
    storage = faiss.downcast_index(loaded.index.storage)
    assert view.__array_interface__["data"][0] == int(storage.get_xb())
    del storage
    gone = load_version(prebuilt_root, cfg=CFG).vectors  # its version and index dropped
    gc.collect()
    assert np.array_equal(gone, from_file.vectors)


def test_a_prebuilt_index_of_other_vectors_refuses_the_version(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    """An index built from other vectors (its files listed in the manifest, so every checksum
    holds) is caught by comparing the file's first rows with the index's."""
    vectors, cluster = clustered
    version_dir = publish(tmp_path, vectors, markets_of(cluster), with_index=False)
    other = vectors.copy()
    other[7] = other[8]
    save_index(build_index(other, CFG), version_dir, N_ITEMS, DIM, CFG)
    manifest = json.loads((version_dir / MANIFEST).read_text())
    for name in (INDEX_FILE, INDEX_META_FILE):
        manifest["files"][name] = file_sha256(version_dir / name)
    (version_dir / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(VersionLoadError, match=r"row 7 differs from the prebuilt ANN index"):
        load_version(tmp_path, cfg=CFG)


def test_without_a_stored_index_one_is_built_and_small_versions_are_exact(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    vectors, cluster = clustered
    publish(tmp_path / "big", vectors, markets_of(cluster), with_index=False)
    small = EXACT_SEARCH_MAX_ITEMS - 1
    publish(tmp_path / "small", vectors[:small], markets_of(cluster[:small]), with_index=True)

    built = load_version(tmp_path / "big", cfg=CFG)
    exact = load_version(tmp_path / "small", cfg=CFG)

    assert (built.index_source, built.is_exact) == ("built", False)
    assert (exact.index_source, exact.is_exact, exact.index_load_s) == ("exact", True, 0.0)
    assert not (tmp_path / "small" / VERSIONS / VERSION / INDEX_FILE).exists()


@pytest.mark.parametrize("breakage", ["bytes", "json", "unlisted_json"])
def test_a_corrupt_or_unlisted_stored_index_refuses_the_version(
    tmp_path: Path, prebuilt_root: Path, breakage: str
) -> None:
    root = tmp_path / "publish"
    version_dir = root / VERSIONS / VERSION
    version_dir.mkdir(parents=True)
    for source in (prebuilt_root / VERSIONS / VERSION).iterdir():
        (version_dir / source.name).write_bytes(source.read_bytes())
    (root / "CURRENT").write_text(VERSION + "\n")
    if breakage == "bytes":  # same length, a few bytes changed: only the checksum sees it
        data = bytearray((version_dir / INDEX_FILE).read_bytes())
        data[5000:5016] = bytes(16)
        (version_dir / INDEX_FILE).write_bytes(bytes(data))
        message = rf"{INDEX_FILE}: sha256 .* does not match manifest.json"
    else:
        meta = json.loads((version_dir / INDEX_META_FILE).read_text())
        (version_dir / INDEX_META_FILE).write_text(json.dumps({**meta, "n_items": 1999}))
        message = rf"prebuilt ANN index is unusable: .*{INDEX_META_FILE}: n_items=1999"
        if breakage == "json":
            message = rf"{INDEX_META_FILE}: sha256 .* does not match manifest.json"
        else:  # a manifest that does not list the index: a file nobody vouched for
            manifest = json.loads((version_dir / MANIFEST).read_text())
            del manifest["files"][INDEX_FILE], manifest["files"][INDEX_META_FILE]
            (version_dir / MANIFEST).write_text(json.dumps(manifest))
            message = rf"does not list {INDEX_FILE}, {INDEX_META_FILE}"

    with pytest.raises(VersionLoadError, match=message):
        load_version(root, cfg=CFG)


# --- two-step search with filters ---------------------------------------------------------------


def test_market_filter_returns_k_items_of_that_market(loaded: LoadedVersion) -> None:
    north_row = next(r for r, m in enumerate(loaded.markets) if m == "north")
    query_id = loaded.ids[north_row]
    for market, k in [("north", 10), ("south", 25), ("island", 10), ("island", 50)]:
        neighbors = loaded.similar(query_id, k, market=market)
        n_in_market = sum(m == market for m in loaded.markets) - (market == "north")
        assert len(neighbors) == min(k, n_in_market)
        assert {n.market for n in neighbors} == {market}
        assert query_id not in {n.item_id for n in neighbors}
        scores = [n.score for n in neighbors]
        assert scores == sorted(scores, reverse=True)
    expected = brute_force(loaded, loaded.vectors[north_row], 10, "north", {query_id})
    assert [n.item_id for n in loaded.similar(query_id, 10, market="north")] == expected
    assert loaded.similar(query_id, 10, market="atlantis") == []


def test_exclude_and_blocklist_are_respected_and_k_still_comes_back(
    loaded: LoadedVersion,
) -> None:
    query_id = loaded.ids[3]
    nearest = [n.item_id for n in loaded.similar(query_id, 60)]
    exclude, blocklist = set(nearest[:30]), nearest[30:60]  # beyond the first ANN fetch (40)

    neighbors = loaded.similar(query_id, 10, exclude=exclude, blocklist=blocklist)

    drop = {query_id, *exclude, *blocklist}
    assert len(neighbors) == 10
    assert not drop & {n.item_id for n in neighbors}
    assert [n.item_id for n in neighbors] == brute_force(loaded, loaded.vectors[3], 10, None, drop)
    with pytest.raises(TypeError, match="collection of item ids"):
        loaded.similar(query_id, 10, exclude=query_id)


@pytest.mark.parametrize("market", [None, "north"])
def test_blocked_rows_are_never_returned_and_k_still_comes_back(
    loaded: LoadedVersion, market: str | None
) -> None:
    query_id = loaded.ids[3]
    nearest = [n.item_id for n in loaded.similar(query_id, 80, market=market)]
    blocked = nearest[:70]  # far beyond the first ANN fetch: the fetch must widen
    rows = np.unique([loaded.row_of[i] for i in blocked])

    neighbors = loaded.similar(query_id, 10, market=market, blocked_rows=rows)
    by_vector = loaded.similar_to_vector(loaded.vectors[3], 10, market=market, blocked_rows=rows)

    drop = {query_id, *blocked}
    expected = brute_force(loaded, loaded.vectors[3], 10, market, drop)
    assert [n.item_id for n in neighbors] == expected
    assert [n.item_id for n in by_vector] == brute_force(
        loaded, loaded.vectors[3], 10, market, set(blocked)
    )  # the query item itself is not excluded from a vector query
    everything = np.arange(loaded.n_items)
    assert loaded.similar(query_id, 10, blocked_rows=everything) == []


def test_similar_to_vector_normalises_and_checks_the_query(loaded: LoadedVersion) -> None:
    query = loaded.vectors[42] * 3.0  # any length: normalised before search

    neighbors = loaded.similar_to_vector(query, 5, blocklist=["unknown-id"])

    assert neighbors[0].item_id == loaded.ids[42]  # not excluded: it is not an item query
    assert neighbors[0].score == pytest.approx(1.0, abs=1e-5)
    assert [n.item_id for n in neighbors] == brute_force(loaded, loaded.vectors[42], 5)
    south = loaded.similar_to_vector(query.tolist(), 5, market="south", exclude=[loaded.ids[0]])
    assert len(south) == 5 and {n.market for n in south} == {"south"}
    for bad, message in [
        (np.ones(DIM + 1), r"shape \(33,\), expected \(32,\)"),
        (np.ones((1, DIM)), r"shape \(1, 32\)"),
        (np.zeros(DIM), "all zeros"),
        (np.full(DIM, np.nan), "NaN or infinite"),
    ]:
        with pytest.raises(ValueError, match=message):
            loaded.similar_to_vector(bad, 5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        loaded.similar_to_vector(query, 0)
