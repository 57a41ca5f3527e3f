"""A prebuilt HNSW index stored in a version folder, so that loading a version never builds one.

Input: the unit-norm item vectors (n_items, dim) in the row order of ``item_vectors.parquet``.
Output: two files in the version folder (CONTRACTS §2 "optional: a prebuilt ANN index"):
``ann_index.hnsw``, hnswlib's own binary format (never pickle), and ``ann_index.json``, which
says what the binary holds (library, space, M, ef_construction, n_items, dim, build time) so
that a reader can refuse an index that belongs to other vectors before loading it.

Labels are row numbers of ``item_vectors.parquet`` in file order: label ``i`` is the item of
row ``i``. The publisher therefore builds the index from the rows exactly as it wrote them
(``write_version_index`` reads them back from the Parquet file to make that certain).

Building HNSW over 1M x 32 takes minutes (about 400 s on 2 cores), loading it about a second:
build at publish time, load at serving time.

    index = build_index(vectors, cfg.serving)               # publish time
    paths = save_index(index, folder, n_items, dim, cfg.serving)
    index = load_index(folder, n_items, dim, cfg.serving)   # serving time; None if absent

hnswlib is imported inside the functions: importing this module stays cheap.
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

from embedding import chaos
from embedding.atomic import write_atomic, write_text_atomic
from embedding.config import ServingConfig
from embedding.errors import EmbeddingError

logger = logging.getLogger(__name__)

INDEX_FILE = "ann_index.hnsw"  # hnswlib's native binary
INDEX_META_FILE = "ann_index.json"  # what the binary holds, checked before loading it
INDEX_SPACE = "ip"  # inner product over unit rows = cosine similarity
EXACT_SEARCH_MAX_ITEMS = 1000  # below this, brute force is as fast as HNSW and exact: no index
SINGLE_THREAD_MAX_ITEMS = 50_000  # up to here, built on one thread with a fixed seed: reproducible
HNSW_RANDOM_SEED = 42  # fixed so that one set of vectors always gives the same graph

# hnswlib 0.8 file header: offsetLevel0, max_elements, cur_element_count, size_data_per_element,
# label_offset, offsetData (size_t), maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M
# (size_t), mult (double), ef_construction (size_t); then the level-0 block of
# cur_element_count * size_data_per_element bytes, then a uint32 link-list size per element.
_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
_FLOAT32_BYTES = 4

_BUILD_SECONDS: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


class AnnIndexError(EmbeddingError):
    """A stored ANN index is incomplete, corrupt, or belongs to other vectors."""

    exit_code = 1


def build_index(vectors: np.ndarray, cfg: ServingConfig, deterministic: bool | None = None) -> Any:
    """An hnswlib inner-product index over unit rows (inner product = cosine); labels = rows.

    Args:
        vectors: (n_items, dim) unit-norm rows, in the row order of ``item_vectors.parquet``.
        cfg: ``hnsw_m``, ``hnsw_ef_construction`` and ``hnsw_ef_search`` (set on the index).
        deterministic: build on one thread with ``HNSW_RANDOM_SEED``, so the same vectors give
            a byte-identical index file; else on all cores (hnswlib's insertion order then
            varies). None: deterministic up to ``SINGLE_THREAD_MAX_ITEMS`` items.

    Returns:
        an ``hnswlib.Index`` ready to query.
    """
    import hnswlib

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise ValueError(f"vectors must be a non-empty (n_items, dim) matrix, got {vectors.shape}")
    n_items, dim = vectors.shape
    if deterministic is None:
        deterministic = n_items <= SINGLE_THREAD_MAX_ITEMS
    num_threads = 1 if deterministic else -1  # -1: all cores
    started = time.perf_counter()
    index = hnswlib.Index(space=INDEX_SPACE, dim=dim)
    index.init_index(
        max_elements=n_items,
        ef_construction=cfg.hnsw_ef_construction,
        M=cfg.hnsw_m,
        random_seed=HNSW_RANDOM_SEED,
    )
    index.set_num_threads(num_threads)
    index.add_items(vectors, np.arange(n_items), num_threads=num_threads)
    index.set_ef(cfg.hnsw_ef_search)  # set once here; changing it while serving is not safe
    build_s = time.perf_counter() - started
    _BUILD_SECONDS[index] = build_s
    logger.info(
        "built HNSW index over %d x %d (M=%d, ef_construction=%d, %s) in %.2f s: %.0f items/s",
        n_items,
        dim,
        cfg.hnsw_m,
        cfg.hnsw_ef_construction,
        "1 thread, deterministic" if deterministic else "all cores",
        build_s,
        n_items / max(build_s, 1e-9),
    )
    return index


def save_index(
    index: Any, folder: Path, n_items: int, dim: int, cfg: ServingConfig
) -> dict[str, Path]:
    """Write ``index`` into ``folder`` as ``INDEX_FILE`` (hnswlib's binary) + ``INDEX_META_FILE``.

    Each file is written under a temporary name, then renamed. ``n_items`` and ``dim`` must
    be those of the Parquet file the index was built from (checked against the index).

    Returns:
        file name -> path of the two files written, for the manifest's ``files`` checksums.
    """
    folder = Path(folder)
    if index.element_count != n_items or index.dim != dim:
        raise AnnIndexError(
            f"index holds {index.element_count} items x {index.dim}, but the version has "
            f"{n_items} x {dim}: build the index from the vectors being published"
        )
    index_path = folder / INDEX_FILE
    meta_path = folder / INDEX_META_FILE
    meta = {
        "library": "hnswlib",
        "version": _hnswlib_version(),
        "space": index.space,
        "M": int(index.M),
        "ef_construction": int(index.ef_construction),
        "ef_search": cfg.hnsw_ef_search,  # what the publisher used; the server sets its own
        "n_items": n_items,
        "dim": dim,
        "labels": "row numbers of item_vectors.parquet in file order",
        "build_s": round(_BUILD_SECONDS[index], 3) if index in _BUILD_SECONDS else None,
    }
    write_atomic(index_path, lambda tmp: index.save_index(str(tmp)))
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

    None when the folder holds neither file. Checked before hnswlib reads it (hnswlib itself
    would load an index of another dim without a word): the JSON's library, space, n_items
    and dim, then the binary's header (item count, vector size) and its minimal length.

    Raises:
        AnnIndexError: one of the two files is missing, the JSON does not describe these
            vectors, or the binary is truncated or unreadable; the message names the file.
    """
    import hnswlib

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
    index = hnswlib.Index(space=meta["space"], dim=dim)
    try:
        index.load_index(str(index_path), max_elements=n_items)
    except (RuntimeError, MemoryError, ValueError) as exc:
        raise AnnIndexError(f"{index_path}: hnswlib cannot load it ({exc})") from exc
    if index.element_count != n_items:
        raise AnnIndexError(
            f"{index_path}: holds {index.element_count} items, but the version has {n_items}"
        )
    index.set_ef(cfg.hnsw_ef_search)
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
    from embedding.vectors_io import VECTORS_FILE, read_vectors

    item_vectors, _ = read_vectors(Path(folder) / VECTORS_FILE)
    n_items, dim = item_vectors.vectors.shape
    if n_items < min_items:
        logger.info("no ANN index for %d items (< %d): served by exact search", n_items, min_items)
        return {}
    index = build_index(item_vectors.vectors, cfg)
    chaos.point("publish.index")
    return save_index(index, Path(folder), n_items, dim, cfg)


def _hnswlib_version() -> str | None:
    try:
        return metadata.version("hnswlib")
    except metadata.PackageNotFoundError:
        return None


def _read_meta(meta_path: Path, n_items: int, dim: int) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnIndexError(f"{meta_path}: not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise AnnIndexError(f"{meta_path}: expected a JSON object at the top level")
    if meta.get("library") != "hnswlib":
        raise AnnIndexError(f"{meta_path}: library {meta.get('library')!r}, expected 'hnswlib'")
    if meta.get("space") not in ("ip", "cosine"):
        raise AnnIndexError(f"{meta_path}: space {meta.get('space')!r}, expected 'ip' or 'cosine'")
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
        raise AnnIndexError(
            f"{index_path}: {size} bytes, shorter than an hnswlib header: truncated"
        )
    (_, _, count, per_element, label_offset, data_offset, *_, m, _, _) = _HEADER.unpack(head)
    if count != n_items:
        raise AnnIndexError(
            f"{index_path}: header says {count} items, but the version has {n_items}"
        )
    if label_offset - data_offset != dim * _FLOAT32_BYTES or m != meta["M"]:
        raise AnnIndexError(
            f"{index_path}: header says {(label_offset - data_offset) // _FLOAT32_BYTES}-dim "
            f"vectors and M={m}, but {INDEX_META_FILE} says dim={dim}, M={meta['M']}"
        )
    min_size = _HEADER.size + count * per_element + count * 4  # + one link-list size each
    if size < min_size:
        raise AnnIndexError(
            f"{index_path}: {size} bytes, but {count} items need at least {min_size}: truncated"
        )
