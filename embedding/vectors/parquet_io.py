"""Read and write item vectors as Parquet (CONTRACTS §2 ``item_vectors.parquet``).

Columns: ``item_id`` string, ``vector`` list<float32> (L2-normalised, fixed dim), ``market``
string, ``n_events`` int64, ``is_cold_start`` bool. Plain Parquet: pandas, pyarrow, DuckDB,
polars and Spark read it with no project code. Rows are sorted by ``item_id``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.core.atomic import write_atomic
from embedding.vectors.item_vectors import ItemVectors

VECTORS_FILE = "item_vectors.parquet"


def vectors_table(
    vectors: ItemVectors,
    markets: dict[str, str | None] | None = None,
    cold_start: set[str] | None = None,
) -> pa.Table:
    order = np.argsort(np.array(vectors.ids, dtype=object), kind="stable")
    ids = [vectors.ids[i] for i in order]
    dim = vectors.dim
    flat = pa.array(np.ascontiguousarray(vectors.vectors[order], dtype=np.float32).ravel())
    offsets = pa.array(np.arange(0, (len(ids) + 1) * dim, dim, dtype=np.int32))
    markets = markets or {}
    return pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "vector": pa.ListArray.from_arrays(offsets, flat),
            "market": pa.array([markets.get(i) for i in ids], pa.string()),
            "n_events": pa.array(vectors.counts[order], pa.int64()),
            "is_cold_start": pa.array([i in (cold_start or ()) for i in ids], pa.bool_()),
        }
    )


def write_vectors(
    path: Path,
    vectors: ItemVectors,
    markets: dict[str, str | None] | None = None,
    cold_start: set[str] | None = None,
) -> None:
    table = vectors_table(vectors, markets, cold_start)
    write_atomic(Path(path), lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_vectors(
    path: Path, trained_only: bool = False
) -> tuple[ItemVectors, dict[str, str | None]]:
    """Vectors and markets of a vectors file; ``trained_only`` drops ``is_cold_start`` rows
    (vectors inferred for untrained items), leaving what training produced."""
    table = pq.read_table(path)
    if trained_only and "is_cold_start" in table.column_names:
        table = table.filter(pc.invert(pc.fill_null(table.column("is_cold_start"), False)))
    ids = table.column("item_id").to_pylist()
    column = table.column("vector").combine_chunks()
    dim = len(column[0]) if len(column) else 0
    matrix = column.flatten().to_numpy().astype(np.float32).reshape(len(ids), dim)
    counts = (
        table.column("n_events").to_numpy()
        if "n_events" in table.column_names
        else np.zeros(len(ids), np.int64)
    )
    markets = (
        dict(zip(ids, table.column("market").to_pylist(), strict=True))
        if "market" in table.column_names
        else {}
    )
    return ItemVectors(ids=ids, vectors=matrix, counts=counts.astype(np.int64)), markets
