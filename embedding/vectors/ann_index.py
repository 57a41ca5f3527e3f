"""A prebuilt HNSW index stored in a version folder, so that loading a version never builds one.

Input: the unit-norm item vectors (n_items, dim) in the row order of ``item_vectors.parquet``.
Output: two files in the version folder (CONTRACTS §2 "optional: a prebuilt ANN index"):
``ann_index.faiss``, FAISS's own binary format for ``IndexHNSWFlat`` (never pickle), and
``ann_index.json``, which says what the binary holds (library, space, M, ef_construction,
n_items, dim, build time) so that a reader can refuse an index that belongs to other vectors
before loading it.

Why FAISS's HNSW (hnswlib's until 2026-12-06): FAISS builds on every core (1M x 32: under two
minutes on 2 cores, against 473 s for hnswlib on one) and releases the GIL while it reads an
index or searches, so a service loading a new version keeps answering (hnswlib's load held the
GIL about a second, and every request queued behind it). An IVF-flat index in numpy was tried
too: memory-mapped and instant to load, but on the benchmark's overlapping clusters it reached
recall@10 0.88 only when scanning 7% of the items, where HNSW reaches 0.98 at 0.45 ms.

Labels are row numbers of ``item_vectors.parquet`` in file order: label ``i`` is the item of
row ``i``. The publisher therefore builds the index from the rows exactly as it wrote them
(``write_version_index`` reads them back from the Parquet file to make that certain).

Build at publish time, load at serving time.

    index = build_index(vectors, cfg.serving)               # publish time
    paths = save_index(index, folder, n_items, dim, cfg.serving)
    index = load_index(folder, n_items, dim, cfg.serving)   # serving time; None if absent

faiss is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from embedding.core import chaos
from embedding.core.atomic import write_atomic, write_text_atomic
from embedding.core.config import ServingConfig
from embedding.core.errors import EmbeddingError

logger = logging.getLogger(__name__)

INDEX_FILE = "ann_index.faiss"  # FAISS's native binary of an IndexHNSWFlat
INDEX_META_FILE = "ann_index.json"  # what the binary holds, checked before loading it
INDEX_SPACE = "ip"  # inner product over unit rows = cosine similarity
EXACT_SEARCH_MAX_ITEMS = 1000  # below this, brute force is as fast as HNSW and exact: no index
SINGLE_THREAD_MAX_ITEMS = 50_000  # up to here, built on one thread with a fixed seed: reproducible
# FAISS index header (faiss/impl/index_write.cpp): fourcc "IHNf" (IndexHNSWFlat), d (int32),
# ntotal (int64), two dummies (int64), is_trained (bool), metric_type (int32; 0 = inner product)
_HEADER = struct.Struct("<4siqqq?i")
_FOURCC = b"IHNf"
_METRIC_INNER_PRODUCT = 0
# the smallest file of n items x dim: header, then at least the flat vectors
_MIN_BYTES_PER_ITEM = 4
_FLOAT32_BYTES = 4

_BUILD_SECONDS: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


class AnnIndexError(EmbeddingError):
    """A stored ANN index is incomplete, corrupt, or belongs to other vectors."""

    exit_code = 1


def build_index(vectors: np.ndarray, cfg: ServingConfig, deterministic: bool | None = None) -> Any:
    """A FAISS HNSW inner-product index over unit rows (inner product = cosine); labels = rows.

    Args:
        vectors: (n_items, dim) unit-norm rows, in the row order of ``item_vectors.parquet``.
        cfg: ``hnsw_m``, ``hnsw_ef_construction`` and ``hnsw_ef_search`` (set on the index).
        deterministic: build on one thread (FAISS draws levels from a fixed seed), so the same
            vectors give a byte-identical index file; else on every core (the insertion order
            then varies, the recall does not). None: deterministic up to
            ``SINGLE_THREAD_MAX_ITEMS`` items.

    Returns:
        a ``faiss.IndexHNSWFlat`` ready to query (``index.search(queries, k)``).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise ValueError(f"vectors must be a non-empty (n_items, dim) matrix, got {vectors.shape}")
    n_items, dim = vectors.shape
    if deterministic is None:
        deterministic = n_items <= SINGLE_THREAD_MAX_ITEMS
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.hnsw_ef_construction
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if deterministic else threads)
    try:
        index.add(vectors)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = cfg.hnsw_ef_search  # set once here, never while serving
    build_s = time.perf_counter() - started
    _BUILD_SECONDS[index] = build_s
    logger.info(
        "built HNSW index over %d x %d (M=%d, ef_construction=%d, %s) in %.2f s: %.0f items/s",
        n_items,
        dim,
        cfg.hnsw_m,
        cfg.hnsw_ef_construction,
        "1 thread, deterministic" if deterministic else f"{threads} threads",
        build_s,
        n_items / max(build_s, 1e-9),
    )
    return index


def save_index(
    index: Any, folder: Path, n_items: int, dim: int, cfg: ServingConfig
) -> dict[str, Path]:
    """Write ``index`` into ``folder`` as ``INDEX_FILE`` (FAISS's binary) + ``INDEX_META_FILE``.

    Each file is written under a temporary name, then renamed. ``n_items`` and ``dim`` must
    be those of the Parquet file the index was built from (checked against the index).

    Returns:
        file name -> path of the two files written, for the manifest's ``files`` checksums.
    """
    import faiss

    folder = Path(folder)
    if index.ntotal != n_items or index.d != dim:
        raise AnnIndexError(
            f"index holds {index.ntotal} items x {index.d}, but the version has "
            f"{n_items} x {dim}: build the index from the vectors being published"
        )
    index_path = folder / INDEX_FILE
    meta_path = folder / INDEX_META_FILE
    meta = {
        "library": "faiss",
        "version": _faiss_version(),
        "index": "IndexHNSWFlat",
        "space": INDEX_SPACE,
        "M": int(cfg.hnsw_m),
        "ef_construction": int(index.hnsw.efConstruction),
        "ef_search": cfg.hnsw_ef_search,  # what the publisher used; the server sets its own
        "n_items": n_items,
        "dim": dim,
        "labels": "row numbers of item_vectors.parquet in file order",
        "build_s": round(_BUILD_SECONDS[index], 3) if index in _BUILD_SECONDS else None,
    }
    write_atomic(index_path, lambda tmp: faiss.write_index(index, str(tmp)))
    write_text_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    logger.info(
        "saved HNSW index (%d items x %d, %.1f MB) to %s",
        n_items,
        dim,
        index_path.stat().st_size / 1e6,
        index_path,
    )
    return {INDEX_FILE: index_path, INDEX_META_FILE: meta_path}


def load_index(folder: Path, n_items: int, dim: int, cfg: ServingConfig) -> Any | None:
    """The index saved in ``folder`` by ``save_index``, with ``cfg.hnsw_ef_search`` set.

    None when the folder holds neither file. Checked before FAISS reads it: the JSON's
    library, space, n_items and dim, then the binary's header (kind, dim, item count, metric)
    and its minimal length. FAISS reads it with the GIL released: requests go on meanwhile.

    Raises:
        AnnIndexError: one of the two files is missing, the JSON does not describe these
            vectors, or the binary is truncated or unreadable; the message names the file.
    """
    import faiss

    folder = Path(folder)
    index_path = folder / INDEX_FILE
    meta_path = folder / INDEX_META_FILE
    if not index_path.exists() and not meta_path.exists():
        return None
    for present, absent in ((index_path, meta_path), (meta_path, index_path)):
        if not absent.is_file():
            raise AnnIndexError(f"{absent} does not exist, but {present.name} does: incomplete")
    started = time.perf_counter()
    meta = _read_meta(meta_path, n_items, dim)
    _check_header(index_path, n_items, dim, meta)
    try:
        index = faiss.read_index(str(index_path))
    except (RuntimeError, MemoryError, ValueError) as exc:
        raise AnnIndexError(f"{index_path}: FAISS cannot load it ({exc})") from exc
    if not isinstance(index, faiss.IndexHNSWFlat) or index.ntotal != n_items or index.d != dim:
        raise AnnIndexError(
            f"{index_path}: holds {index.ntotal} items x {index.d}, but the version has "
            f"{n_items} x {dim}"
        )
    index.hnsw.efSearch = cfg.hnsw_ef_search
    logger.info(
        "loaded HNSW index %s (%d items x %d, M=%d) in %.2f s",
        index_path,
        n_items,
        dim,
        meta["M"],
        time.perf_counter() - started,
    )
    return index


def write_version_index(
    folder: Path, cfg: ServingConfig, min_items: int = EXACT_SEARCH_MAX_ITEMS
) -> dict[str, Path]:
    """Build and save the index for the ``item_vectors.parquet`` already written in ``folder``.

    Reads the vectors back from the Parquet file, so labels are its row numbers whatever order
    the caller holds them in. Versions under ``min_items`` items get no index (the server
    searches them exactly) and an empty mapping comes back.

    Returns:
        file name -> path of the files written (see ``save_index``).
    """
    from embedding.vectors.parquet_io import VECTORS_FILE, read_vectors

    item_vectors, _ = read_vectors(Path(folder) / VECTORS_FILE)
    n_items, dim = item_vectors.vectors.shape
    if n_items < min_items:
        logger.info("no ANN index for %d items (< %d): served by exact search", n_items, min_items)
        return {}
    index = build_index(item_vectors.vectors, cfg)
    chaos.point("publish.index")
    return save_index(index, Path(folder), n_items, dim, cfg)


def _faiss_version() -> str | None:
    try:
        return metadata.version("faiss-cpu")
    except metadata.PackageNotFoundError:
        return None


def _read_meta(meta_path: Path, n_items: int, dim: int) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnIndexError(f"{meta_path}: not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise AnnIndexError(f"{meta_path}: expected a JSON object at the top level")
    if meta.get("library") != "faiss":
        raise AnnIndexError(f"{meta_path}: library {meta.get('library')!r}, expected 'faiss'")
    if meta.get("space") != INDEX_SPACE:
        raise AnnIndexError(f"{meta_path}: space {meta.get('space')!r}, expected 'ip'")
    for key, expected in (("n_items", n_items), ("dim", dim)):
        if meta.get(key) != expected:
            raise AnnIndexError(
                f"{meta_path}: {key}={meta.get(key)!r}, but the version has {key}={expected}: "
                "the index belongs to other vectors; republish the version"
            )
    if not isinstance(meta.get("M"), int) or meta["M"] < 1:
        raise AnnIndexError(f"{meta_path}: 'M' must be a positive integer, got {meta.get('M')!r}")
    return meta


def _check_header(index_path: Path, n_items: int, dim: int, meta: dict[str, Any]) -> None:
    size = index_path.stat().st_size
    with index_path.open("rb") as handle:
        head = handle.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise AnnIndexError(f"{index_path}: {size} bytes, shorter than a FAISS header: truncated")
    fourcc, d, count, _, _, _, metric = _HEADER.unpack(head)
    if fourcc != _FOURCC or metric != _METRIC_INNER_PRODUCT:
        raise AnnIndexError(
            f"{index_path}: not a FAISS inner-product IndexHNSWFlat (kind {fourcc!r}, "
            f"metric {metric})"
        )
    if count != n_items:
        raise AnnIndexError(
            f"{index_path}: header says {count} items, but the version has {n_items}"
        )
    if d != dim:
        raise AnnIndexError(
            f"{index_path}: header says {d}-dim vectors, but {INDEX_META_FILE} says dim={dim}"
        )
    min_size = _HEADER.size + count * d * _FLOAT32_BYTES + count * _MIN_BYTES_PER_ITEM
    if size < min_size:
        raise AnnIndexError(
            f"{index_path}: {size} bytes, but {count} items need at least {min_size}: truncated"
        )
