"""Cold start from the item table: similar trained items of the same market, measured."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from embedding.quality.cold_start import (
    cold_start_vectors,
    item_meta,
    measure_cold_start,
    with_cold_start,
)
from embedding.vectors.item_vectors import ItemVectors, normalize_rows


def table(rows: list[tuple]) -> pa.Table:
    item, market, price, kind = zip(*rows, strict=True)
    return pa.table({"item_id": list(item), "market": list(market),
                     "price": pa.array(price, pa.float64()), "type": list(kind),
                     "n_shown": [1] * len(item)})  # fmt: skip


def trained(ids: list[str], vectors: list[list[float]]) -> ItemVectors:
    matrix = normalize_rows(np.array(vectors, dtype=np.float32))
    return ItemVectors(ids, matrix, np.ones(len(ids), np.int64))


def test_a_cold_item_gets_the_mean_of_its_most_similar_same_market_items() -> None:
    meta = item_meta(table([
        ("a", "paris", 100.0, "hotel"), ("b", "paris", 110.0, "hotel"),
        ("c", "paris", 105.0, "hostel"), ("d", "paris", 400.0, "hotel"),
        ("e", "rome", 100.0, "hotel"),
        ("new", "paris", 104.0, "hotel"), ("lost", "oslo", 100.0, "hotel"),
        ("nomarket", None, 100.0, "hotel"),
    ]))  # fmt: skip
    base = trained(
        ["a", "b", "c", "d", "e"], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [-1, 0, 0]]
    )
    cold = cold_start_vectors(base, meta, k=2)
    assert set(cold) == {"new"}  # oslo has no trained item; no market: no neighbours
    # same type first (a, b, d are hotels), then the closest prices: a (100) and b (110)
    np.testing.assert_allclose(cold["new"], normalize_rows(np.array([[1.0, 1.0, 0.0]]))[0])
    merged, ids = with_cold_start(base, cold)
    assert ids == {"new"} and merged.ids[-1] == "new" and merged.counts[-1] == 0
    assert with_cold_start(base, {}) == (base, set())


def test_latest_row_of_each_item_wins() -> None:
    rows = table([("a", "paris", 100.0, "hotel"), ("a", "rome", 90.0, "hotel")])
    meta = item_meta(rows.append_column("dt", pa.array(["2026-01-02", "2026-01-01"])))
    assert meta.ids == ["a"] and meta.markets == ["paris"]
    assert meta.numeric[0, 0] == pytest.approx(np.log1p(100.0))


def test_measurement_beats_random_when_metadata_carries_the_signal() -> None:
    rng = np.random.default_rng(0)
    rows, ids, vectors = [], [], []
    for i in range(400):  # two kinds per market; a kind's items sit around its own direction
        kind = "hotel" if i % 2 else "hostel"
        centre = np.eye(8)[(i % 2) + 2 * (i % 3)]
        ids.append(f"i{i:03d}")
        vectors.append(centre + 0.3 * rng.normal(size=8))
        rows.append((ids[-1], f"m{i % 3}", float(rng.integers(50, 300)), kind))
    meta = item_meta(table(rows))
    result = measure_cold_start(trained(ids, vectors), meta, k=3, n_hidden=60, seed=1)
    assert result["n_hidden"] == 60
    ours, chance = result["metadata"], result["random_same_market"]
    assert ours["coverage"] == chance["coverage"] == 1.0
    assert ours["cosine"] > chance["cosine"] + 0.2
    assert ours["overlap@10"] > chance["overlap@10"]


def test_trained_only_read_drops_cold_start_rows(tmp_path) -> None:
    """The gate re-scores the previous version without its cold-start rows, as the candidate."""
    from embedding.vectors.parquet_io import read_vectors, write_vectors

    rng = np.random.default_rng(0)
    vectors = ItemVectors(["a", "b", "c"], normalize_rows(rng.normal(size=(3, 4))), np.ones(3, int))
    path = tmp_path / "v.parquet"
    write_vectors(path, vectors, {"a": "m1", "b": "m1", "c": "m2"}, cold_start={"b"})

    every, _ = read_vectors(path)
    trained, markets = read_vectors(path, trained_only=True)

    assert every.ids == ["a", "b", "c"]
    assert trained.ids == ["a", "c"] and markets == {"a": "m1", "c": "m2"}
    np.testing.assert_array_equal(trained.vectors, every.vectors[[0, 2]])
