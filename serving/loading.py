"""Read and check one published version's files for serving: its columns, then its ANN index.

Input: a version folder that ``embedding.vectors.versions.verify_version`` accepted (every file
listed in ``manifest.json`` and matching its sha256) and that manifest. Output: the columns
``serving.model.LoadedVersion`` holds (ids, unit-norm float32 vectors, markets, cold-start flags)
and the index over the vectors. Nothing is trusted blindly: every vector must have the
manifest's ``dim`` and unit L2 norm, and ids must be unique; otherwise ``VersionError``
(``serving.model.VersionLoadError``) says what is wrong and where.

The HNSW index (FAISS) comes prebuilt with the version when the publisher stored one
(``embedding.vectors.ann_index``: ``ann_index.faiss`` + ``ann_index.json``, checked against the
manifest's sha256 and against the vectors); a version without one gets an index built at load
time (a minute or two for a million items). A stored index that fails a
check refuses the whole version: the caller keeps serving the old one.
``open_index`` says which happened ("prebuilt", "built" or "exact": fewer than
``EXACT_SEARCH_MAX_ITEMS`` items are searched exactly with numpy, an index buys nothing there).

    manifest = verify_version(version_dir)
    columns, index, index_source, index_load_s = read_version(version_dir, manifest, cfg)

With a prebuilt index the vectors are not decoded from Parquet at all: they are the index's own
storage (an HNSW index keeps every vector it was built from), viewed in place
(``index_vectors``). Decoding the 1M x 32 ``vector`` column cost more than half of a load's CPU
(0.6 s of 2.1 s), and a swap's load competes with the requests served meanwhile; the version's
memory also holds its vectors once instead of twice. The index was built from this very file
(``write_version_index`` reads it back) and its bytes match the manifest; the first
``INDEX_CHECK_ROWS`` rows of the file are still compared with the index's, so an index of other
vectors is refused, and every row's unit norm is checked as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.core.config import ServingConfig
from embedding.vectors.ann_index import (
    EXACT_SEARCH_MAX_ITEMS,
    INDEX_FILE,
    INDEX_META_FILE,
    AnnIndexError,
    build_index,
    load_index,
)
from embedding.vectors.parquet_io import VECTORS_FILE
from embedding.vectors.versions import MANIFEST, VersionError
from serving.columns import IdColumn, IdIndex, MarketColumn, string_item_ids

logger = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-3  # |‖v‖ - 1| above this means the publisher did not normalise
INDEX_CHECK_ROWS = 4096  # rows of the file compared with a prebuilt index's own vectors

IndexSource = Literal["prebuilt", "built", "exact"]


class VersionColumns(NamedTuple):
    ids: IdColumn
    row_of: IdIndex  # inverts ids
    vectors: np.ndarray  # (n_items, dim) float32, read-only, unit rows
    markets: MarketColumn
    is_cold_start: np.ndarray | None  # (n_items,) bool, read-only; None: no such column


def read_version(
    version_dir: Path, manifest: Mapping[str, Any], cfg: ServingConfig
) -> tuple[VersionColumns, Any, IndexSource, float]:
    """(columns, index or None, where the index came from, seconds spent on it).

    Raises:
        VersionError: a file is unreadable or breaks the contract (see ``read_columns`` and
            ``open_index``).
    """
    n_items = _manifest_int(manifest, "n_items", version_dir)
    dim = _manifest_int(manifest, "dim", version_dir)
    if n_items >= EXACT_SEARCH_MAX_ITEMS and _stored_index(version_dir):
        started = time.perf_counter()
        index = _load_prebuilt(version_dir, n_items, dim, cfg)
        load_s = time.perf_counter() - started
        return read_columns(version_dir, manifest, index), index, "prebuilt", load_s
    columns = read_columns(version_dir, manifest)
    index, source, load_s = open_index(version_dir, columns.vectors, cfg)
    return columns, index, source, load_s


def read_columns(
    version_dir: Path, manifest: Mapping[str, Any], index: Any = None
) -> VersionColumns:
    """The columns of ``version_dir``'s Parquet file, checked against ``manifest``.

    With ``index`` (the version's prebuilt FAISS index) the vectors are the index's own
    (``index_vectors``), checked against the file's first ``INDEX_CHECK_ROWS`` rows.

    Raises:
        VersionError: the file is unreadable, or its vectors break the contract (dim, unit
            norm, unique non-null ids, ``n_items`` rows), or they are not ``index``'s.
    """
    dim = _manifest_int(manifest, "dim", version_dir)
    vectors_path = version_dir / VECTORS_FILE
    ids, vectors, markets, cold_start = _read_vectors(vectors_path, dim, index is None)

    n_items = _manifest_int(manifest, "n_items", version_dir)
    if n_items != len(ids):
        raise VersionError(
            f"{vectors_path}: {len(ids)} rows but manifest.json says n_items={n_items}"
        )
    if index is not None:
        vectors = index_vectors(index)
        _check_index_rows(vectors_path, vectors, dim)
    row_of = _index_ids(ids, vectors_path)
    _check_unit_norm(vectors, ids, vectors_path)

    vectors.setflags(write=False)
    return VersionColumns(ids, row_of, vectors, markets, cold_start)


def index_vectors(index: Any) -> np.ndarray:
    """The vectors an HNSW index stores, as a read-only (n_items, dim) float32 view in place.

    The view's base holds ``index``: the memory lives as long as the array, whoever keeps it.
    """
    import faiss

    storage = faiss.downcast_index(index.storage)
    if not isinstance(storage, faiss.IndexFlat):
        raise VersionError(f"the ANN index stores its vectors as {type(storage).__name__}")
    view = np.asarray(_Borrowed(index, int(storage.get_xb()), (index.ntotal, index.d)))
    return view  # (n_items, dim), read-only


class _Borrowed:
    """An ``__array_interface__`` over memory ``owner`` keeps alive (numpy holds this object)."""

    def __init__(self, owner: Any, address: int, shape: tuple[int, int]) -> None:
        self.owner = owner
        self.__array_interface__ = {
            "data": (address, True),  # read-only
            "shape": shape,
            "typestr": "<f4",
            "version": 3,
        }


def _check_index_rows(vectors_path: Path, vectors: np.ndarray, dim: int) -> None:
    """The file's first rows must be the index's first rows, bit for bit."""
    try:
        batch = next(
            pq.ParquetFile(vectors_path).iter_batches(
                batch_size=INDEX_CHECK_ROWS, columns=["vector"], use_threads=False
            )
        )
    except (OSError, StopIteration, pa.ArrowException) as exc:
        raise VersionError(f"{vectors_path}: cannot read its vectors ({exc})") from exc
    head = _vectors_to_numpy(batch.column(0), dim, vectors_path)  # (rows, dim)
    differ = np.flatnonzero(~np.all(head == vectors[: len(head)], axis=1))
    if differ.size:
        raise VersionError(
            f"{vectors_path}: row {int(differ[0])} differs from the prebuilt ANN index's "
            f"vector for it: the index was not built from this file; republish the version"
        )


def open_index(
    version_dir: Path, vectors: np.ndarray, cfg: ServingConfig
) -> tuple[Any, IndexSource, float]:
    """(index or None, where it came from, seconds spent) for the verified ``vectors``.

    ``verify_version`` already checked every file of the folder against the manifest (an
    unlisted index refuses the version); here the stored index must be whole and its metadata
    match the vectors, or the version is refused. No stored index: one is built now.
    """
    n_items, dim = vectors.shape
    if n_items < EXACT_SEARCH_MAX_ITEMS:
        return None, "exact", 0.0
    started = time.perf_counter()
    if _stored_index(version_dir):
        index = _load_prebuilt(version_dir, n_items, dim, cfg)
        return index, "prebuilt", time.perf_counter() - started
    logger.warning(
        "version %s has no prebuilt ANN index (%s): building one over %d items now; "
        "publish the index with the version to make loading fast",
        version_dir.name,
        INDEX_FILE,
        n_items,
    )
    index = build_index(vectors, cfg)
    return index, "built", time.perf_counter() - started


def _stored_index(version_dir: Path) -> bool:
    """Whether the version stores an index; half of one refuses the version."""
    stored = [version_dir / name for name in (INDEX_FILE, INDEX_META_FILE)]
    if not any(path.exists() for path in stored):
        return False
    if not all(path.exists() for path in stored):  # verify_version checked what is listed
        missing = [path.name for path in stored if not path.exists()]
        raise VersionError(
            f"version {version_dir.name}: the ANN index is incomplete ({', '.join(missing)} "
            "missing); republish the version"
        )
    return True


def _load_prebuilt(version_dir: Path, n_items: int, dim: int, cfg: ServingConfig) -> Any:
    try:
        index = load_index(version_dir, n_items, dim, cfg)
    except AnnIndexError as exc:
        raise VersionError(
            f"version {version_dir.name}: the prebuilt ANN index is unusable: {exc}"
        ) from exc
    if index is None:  # removed between the check and the load
        raise VersionError(f"{version_dir / INDEX_FILE}: disappeared while loading")
    return index


def _manifest_int(manifest: Mapping[str, Any], key: str, version_dir: Path) -> int:
    value = manifest.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise VersionError(
            f"{version_dir / MANIFEST}: '{key}' must be a positive integer, got {value!r}"
        )
    return value


def _read_vectors(
    vectors_path: Path, dim: int, with_vectors: bool = True
) -> tuple[IdColumn, np.ndarray | None, MarketColumn, np.ndarray | None]:
    """(ids, vectors (n, dim) float32 or None without ``with_vectors``, markets,
    is_cold_start (n,) bool or None) from Parquet."""
    try:
        names = pq.read_schema(vectors_path).names
        for column in ("item_id", "vector"):
            if column not in names:
                raise VersionError(f"{vectors_path}: no '{column}' column (has {names})")
        # one thread: Arrow's thread pool would compete with the requests served meanwhile,
        # and its hand-over holds the GIL for tens of ms at 1M rows (max 60 ms vs 1 ms)
        wanted = names if with_vectors else [name for name in names if name != "vector"]
        table = pq.read_table(vectors_path, columns=wanted, use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise VersionError(f"{vectors_path}: cannot read as Parquet ({exc})") from exc
    if table.num_rows == 0:
        raise VersionError(f"{vectors_path}: holds no items")

    try:
        item_ids = string_item_ids(table.column("item_id"), vectors_path)
    except ValueError as exc:
        raise VersionError(str(exc)) from exc
    vectors = None
    if with_vectors:
        vectors = _vectors_to_numpy(table.column("vector").combine_chunks(), dim, vectors_path)

    market = table.column("market") if "market" in table.column_names else None
    try:
        ids = IdColumn.from_arrow(item_ids)
        markets = MarketColumn.from_arrow(market, table.num_rows)
    except (ValueError, pa.ArrowException) as exc:
        raise VersionError(f"{vectors_path}: {exc}") from exc
    return ids, vectors, markets, _cold_start_flags(table, vectors_path)


def _cold_start_flags(table: pa.Table, vectors_path: Path) -> np.ndarray | None:
    """The optional ``is_cold_start`` column as a read-only bool array (null: False)."""
    if "is_cold_start" not in table.column_names:
        return None
    column = table.column("is_cold_start")
    if not pa.types.is_boolean(column.type):
        raise VersionError(f"{vectors_path}: 'is_cold_start' is {column.type}, expected bool")
    flags = column.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)  # (n_items,)
    flags.setflags(write=False)
    return flags


def _vectors_to_numpy(column: pa.Array, dim: int, vectors_path: Path) -> np.ndarray:
    value_type = getattr(column.type, "value_type", None)
    if value_type is None or not pa.types.is_floating(value_type):
        raise VersionError(
            f"{vectors_path}: 'vector' is {column.type}, expected list<float32> of length {dim}"
        )
    if column.null_count:
        raise VersionError(f"{vectors_path}: {column.null_count} rows have a null vector")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)  # (n_items,)
    if not np.all(lengths == dim):
        bad = int(np.flatnonzero(lengths != dim)[0])
        raise VersionError(
            f"{vectors_path}: row {bad} has a vector of length {int(lengths[bad])}, "
            f"but manifest.json says dim={dim}"
        )
    values = column.flatten()
    if values.null_count:
        raise VersionError(f"{vectors_path}: vectors hold {values.null_count} null values")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
    return flat.reshape(len(column), dim)  # (n_items, dim)


def _index_ids(ids: IdColumn, vectors_path: Path) -> IdIndex:
    try:
        return ids.index()
    except ValueError as exc:  # duplicated ids, named
        raise VersionError(f"{vectors_path}: {exc}; each item must appear once") from exc


def _check_unit_norm(vectors: np.ndarray, ids: list[str], vectors_path: Path) -> None:
    norms = np.linalg.norm(vectors, axis=1)  # (n_items,)
    bad_rows = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))  # NaN counts as bad
    if bad_rows.size:
        examples = ", ".join(f"{ids[r]!r} (norm {norms[r]:.4g})" for r in bad_rows[:3])
        raise VersionError(
            f"{vectors_path}: {bad_rows.size} of {len(ids)} vectors are not L2-normalised "
            f"(tolerance {NORM_TOLERANCE}), e.g. {examples}; the publisher must normalise them"
        )
