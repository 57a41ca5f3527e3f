"""An analyst reads a published version with pandas, pyarrow, DuckDB, polars or Spark alone.

CONTRACTS §2 promises that ``item_vectors.parquet`` is plain Parquet: "Any of pandas, pyarrow,
DuckDB, polars and Spark reads it with no project code", and that nothing in a version folder is
loaded with pickle. These tests publish one real version with the project's own
``publish_version`` (50 items, dim 8, unit-norm float32 vectors, markets, a few cold-start
items, a report), then, for each library, use only that library (and numpy / the standard
library) to resolve ``CURRENT``, read the vectors and check what an analyst relies on: one row
per item of the manifest, string ``item_id``, a float list of the manifest's ``dim`` with unit
L2 norm, an item's vector equal to the one published, and an exact cosine top-3 (computed in the
library where it can: DuckDB SQL, polars expressions, Spark SQL functions) equal to a numpy
reference built from the vectors before they were published. A last test scans the version
folder for pickle files by name and by protocol header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

VERSION = "20260108-abcdef12"
N_ITEMS = 50
DIM = 8
QUERY = "item-017"
TOP_K = 3
NORM_TOL = 1e-5


@dataclass(frozen=True)
class Published:
    root: Path
    vectors: dict[str, np.ndarray]  # item_id -> the float32 vector handed to publish
    markets: dict[str, str | None]
    cold_start: set[str]
    top3: list[str]  # numpy reference: nearest items of QUERY by cosine, QUERY itself excluded
    top3_scores: np.ndarray


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """One version published by project code; the tests below read it without project code."""
    from embedding.vectors.item_vectors import ItemVectors, normalize_rows
    from embedding.vectors.publish import publish_version

    rng = np.random.default_rng(20260108)
    # ids handed over out of order, so a lookup by id cannot pass by row position
    ids = [f"item-{i:03d}" for i in rng.permutation(N_ITEMS)]
    matrix = normalize_rows(rng.normal(size=(N_ITEMS, DIM)).astype(np.float32))
    markets = {item: (f"city-{int(item[-3:]) % 4}" if item != "item-049" else None) for item in ids}
    cold_start = {f"item-{i:03d}" for i in (3, 11, 29, 40, 48)}
    root = tmp_path_factory.mktemp("publish")
    publish_version(
        root,
        VERSION,
        ItemVectors(ids=ids, vectors=matrix, counts=rng.integers(1, 500, N_ITEMS)),
        markets,
        {"data_interval": {"start": "2026-01-01", "end": "2026-01-09"}, "params": {}},
        cold_start=cold_start,
        extra_files={"report.html": "<html><body>report</body></html>\n"},
    )

    vectors = dict(zip(ids, matrix, strict=True))
    scores = matrix @ vectors[QUERY]
    scores[ids.index(QUERY)] = -np.inf
    order = np.argsort(-scores)
    # the reference top-3 must be unambiguous at float32 precision
    assert scores[order[TOP_K - 1]] - scores[order[TOP_K]] > 1e-4
    return Published(
        root=root,
        vectors=vectors,
        markets=markets,
        cold_start=cold_start,
        top3=[ids[i] for i in order[:TOP_K]],
        top3_scores=scores[order[:TOP_K]],
    )


# -- what an analyst does by hand: no project code from here on ---------------------------------


def _version_dir(root: Path) -> Path:
    return root / "versions" / (root / "CURRENT").read_text().strip()


def _manifest(root: Path) -> dict:
    return json.loads((_version_dir(root) / "manifest.json").read_text())


def _vectors_path(root: Path) -> str:
    return str(_version_dir(root) / "item_vectors.parquet")


def _assert_unit_rows(matrix: np.ndarray, manifest: dict) -> None:
    assert matrix.shape == (manifest["n_items"], manifest["dim"])
    assert matrix.dtype.kind == "f"
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=NORM_TOL)


def _numpy_top3(ids: list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Cosine top-3 of QUERY on what a library returned (rows are unit-norm: dot = cosine)."""
    scores = matrix.astype(np.float64) @ matrix[ids.index(QUERY)].astype(np.float64)
    scores[ids.index(QUERY)] = -np.inf
    order = np.argsort(-scores)[:TOP_K]
    return [ids[i] for i in order], scores[order]


def test_manifest_and_current_describe_the_published_version(published: Published) -> None:
    assert (published.root / "CURRENT").read_text().strip() == VERSION
    manifest = _manifest(published.root)
    assert manifest["version"] == VERSION
    assert (manifest["n_items"], manifest["dim"]) == (N_ITEMS, DIM)
    assert "item_vectors.parquet" in manifest["files"]


def test_pandas_reads_the_vectors(published: Published) -> None:
    import pandas as pd

    manifest = _manifest(published.root)
    frame = pd.read_parquet(_vectors_path(published.root))

    assert len(frame) == manifest["n_items"]
    assert frame["item_id"].map(type).eq(str).all()
    assert set(frame["item_id"]) == set(published.vectors)
    assert frame["vector"].map(len).eq(manifest["dim"]).all()
    matrix = np.stack(frame["vector"].to_numpy())
    _assert_unit_rows(matrix, manifest)

    by_id = frame.set_index("item_id")
    np.testing.assert_array_equal(
        np.asarray(by_id.loc[QUERY, "vector"], np.float32), published.vectors[QUERY]
    )
    assert set(frame.loc[frame["is_cold_start"], "item_id"]) == published.cold_start
    assert by_id["market"].where(by_id["market"].notna(), None).to_dict() == published.markets

    top, scores = _numpy_top3(frame["item_id"].tolist(), matrix)
    assert top == published.top3
    np.testing.assert_allclose(scores, published.top3_scores, atol=1e-6)


def test_pyarrow_reads_the_vectors(published: Published) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest = _manifest(published.root)
    table = pq.read_table(_vectors_path(published.root))

    assert table.num_rows == manifest["n_items"]
    assert table.schema.field("item_id").type == pa.string()
    vector_type = table.schema.field("vector").type
    assert pa.types.is_list(vector_type) and vector_type.value_type == pa.float32()
    assert pc.all(pc.equal(pc.list_value_length(table["vector"]), manifest["dim"])).as_py()

    column = table["vector"].combine_chunks()
    matrix = column.flatten().to_numpy().reshape(table.num_rows, manifest["dim"])
    _assert_unit_rows(matrix, manifest)

    row = table.filter(pc.equal(table["item_id"], QUERY))
    assert row.num_rows == 1
    found = np.asarray(row["vector"][0].as_py(), np.float32)
    np.testing.assert_array_equal(found, published.vectors[QUERY])
    cold = table.filter(table["is_cold_start"])["item_id"].to_pylist()
    assert set(cold) == published.cold_start

    top, scores = _numpy_top3(table["item_id"].to_pylist(), matrix)
    assert top == published.top3
    np.testing.assert_allclose(scores, published.top3_scores, atol=1e-6)


def test_duckdb_reads_the_vectors_and_ranks_by_cosine_in_sql(published: Published) -> None:
    import duckdb

    manifest = _manifest(published.root)
    path = _vectors_path(published.root)
    con = duckdb.connect()
    try:
        quoted = path.replace("'", "''")  # a SQL string literal; views take no parameters
        con.execute(f"CREATE VIEW v AS SELECT * FROM read_parquet('{quoted}')")
        n, n_ids, id_type, vector_type, min_len, max_len, worst_norm, n_cold = con.execute(
            """
            SELECT count(*), count(DISTINCT item_id), any_value(typeof(item_id)),
                   any_value(typeof(vector)), min(len(vector)), max(len(vector)),
                   max(abs(sqrt(list_dot_product(vector, vector)) - 1)),
                   count(*) FILTER (WHERE is_cold_start)
            FROM v
            """
        ).fetchone()
        assert n == n_ids == manifest["n_items"]
        assert (id_type, vector_type) == ("VARCHAR", "FLOAT[]")
        assert min_len == max_len == manifest["dim"]
        assert worst_norm < NORM_TOL
        assert n_cold == len(published.cold_start)

        (found,) = con.execute("SELECT vector FROM v WHERE item_id = ?", [QUERY]).fetchone()
        np.testing.assert_array_equal(np.asarray(found, np.float32), published.vectors[QUERY])

        top = con.execute(
            """
            WITH q AS (SELECT vector FROM v WHERE item_id = $query)
            SELECT v.item_id, list_cosine_similarity(v.vector, q.vector) AS score
            FROM v, q
            WHERE v.item_id <> $query
            ORDER BY score DESC
            LIMIT $k
            """,
            {"query": QUERY, "k": TOP_K},
        ).fetchall()
    finally:
        con.close()
    assert [item for item, _ in top] == published.top3
    np.testing.assert_allclose([s for _, s in top], published.top3_scores, atol=1e-5)


def test_polars_reads_the_vectors_and_ranks_by_cosine(published: Published) -> None:
    import polars as pl

    manifest = _manifest(published.root)
    frame = pl.read_parquet(_vectors_path(published.root))

    assert frame.height == manifest["n_items"]
    assert frame.schema["item_id"] == pl.String
    assert frame.schema["vector"] == pl.List(pl.Float32)
    assert (frame["vector"].list.len() == manifest["dim"]).all()
    matrix = frame["vector"].list.to_array(manifest["dim"]).to_numpy()
    _assert_unit_rows(matrix, manifest)

    query = frame.filter(pl.col("item_id") == QUERY)["vector"][0]  # a pl.Series
    np.testing.assert_array_equal(query.to_numpy(), published.vectors[QUERY])
    cold = frame.filter(pl.col("is_cold_start"))["item_id"].to_list()
    assert set(cold) == published.cold_start

    top = (
        frame.filter(pl.col("item_id") != QUERY)
        .with_columns(
            score=pl.col("vector").list.eval((pl.element() * pl.lit(query)).sum()).list.first()
        )
        .sort("score", descending=True)
        .head(TOP_K)
    )
    assert top["item_id"].to_list() == published.top3
    np.testing.assert_allclose(top["score"].to_numpy(), published.top3_scores, atol=1e-5)


def test_spark_reads_the_vectors_and_ranks_by_cosine(published: Published, spark) -> None:
    from pyspark.sql import functions as F

    manifest = _manifest(published.root)
    frame = spark.read.parquet(_vectors_path(published.root))

    types = dict(frame.dtypes)
    assert types["item_id"] == "string"
    assert types["vector"] == "array<float>"
    assert frame.count() == manifest["n_items"]

    def dot(column, other):
        products = F.zip_with(column, other, lambda a, b: a.cast("double") * b)
        return F.aggregate(products, F.lit(0.0).cast("double"), lambda acc, x: acc + x)

    stats = frame.agg(
        F.min(F.size("vector")).alias("min_len"),
        F.max(F.size("vector")).alias("max_len"),
        F.max(F.abs(F.sqrt(dot(F.col("vector"), F.col("vector"))) - 1)).alias("worst_norm"),
        F.sum(F.col("is_cold_start").cast("int")).alias("n_cold"),
    ).first()
    assert stats["min_len"] == stats["max_len"] == manifest["dim"]
    assert stats["worst_norm"] < NORM_TOL
    assert stats["n_cold"] == len(published.cold_start)

    rows = frame.filter(F.col("item_id") == QUERY).select("vector").collect()
    assert len(rows) == 1
    query = rows[0]["vector"]  # list of Python floats, widened exactly from float32
    np.testing.assert_array_equal(np.asarray(query, np.float32), published.vectors[QUERY])

    literal = F.array(*[F.lit(x) for x in query])
    top = (
        frame.filter(F.col("item_id") != QUERY)
        .select("item_id", dot(F.col("vector"), literal).alias("score"))
        .orderBy(F.col("score").desc())
        .limit(TOP_K)
        .collect()
    )
    assert [row["item_id"] for row in top] == published.top3
    np.testing.assert_allclose([row["score"] for row in top], published.top3_scores, atol=1e-5)


PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}
PICKLE_HEADERS = tuple(bytes([0x80, protocol]) for protocol in (2, 3, 4, 5))


def test_version_folder_holds_no_pickle(published: Published) -> None:
    folder = _version_dir(published.root)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"item_vectors.parquet", "manifest.json", "report.html"}
    for path in files:
        assert path.suffix.lower() not in PICKLE_SUFFIXES, path
        with path.open("rb") as handle:
            head = handle.read(2)
        assert head not in PICKLE_HEADERS, f"{path}: starts like a pickle"
    # the vectors are Parquet by their magic bytes, at both ends of the file
    data = (folder / "item_vectors.parquet").read_bytes()
    assert data[:4] == data[-4:] == b"PAR1"
    json.loads((folder / "manifest.json").read_text())  # plain JSON, not a serialized object
