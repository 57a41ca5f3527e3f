"""Load one published version of the item vectors into memory and answer neighbour queries.

Input: ``<publish_root>/versions/<version>/`` (CONTRACTS.md §2), the version named by
``CURRENT`` unless given. Output: a ``LoadedVersion``: ids, unit-norm float32 vectors, markets
and an index over them. Nothing is trusted blindly: the Parquet file must match the sha256 in
``manifest.json``, every vector must have the manifest's ``dim`` and unit L2 norm, and ids must
be unique; otherwise ``VersionLoadError`` says what is wrong and where.

Queries fetch ``k + 1`` candidates (the query item finds itself), drop the query item, then
re-score the rest exactly (cosine = dot product of unit vectors), so scores never carry the ANN
index's approximation. Fewer than ``EXACT_SEARCH_MAX_ITEMS`` items are searched exactly with
numpy instead: an HNSW graph buys nothing at that size.

    loaded = load_version(Path("publish"), cfg=load_config("conf/default.yaml").serving)
    for item_id, score, market in loaded.similar("h123", k=10):
        ...
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.checksum import file_sha256
from embedding.config import ServingConfig
from embedding.errors import EmbeddingError
from embedding.publish import CURRENT, MANIFEST, VERSIONS
from embedding.vectors_io import VECTORS_FILE

logger = logging.getLogger(__name__)

# the published layout's names come from the publisher (CONTRACTS §2)
CURRENT_FILE = CURRENT
VERSIONS_DIR = VERSIONS
MANIFEST_FILE = MANIFEST

NORM_TOLERANCE = 1e-3  # |‖v‖ - 1| above this means the publisher did not normalise
EXACT_SEARCH_MAX_ITEMS = 1000  # below this, brute force is as fast as HNSW and exact
SINGLE_THREAD_MAX_ITEMS = 50_000  # up to here the index is built on one thread: reproducible
HNSW_RANDOM_SEED = 42  # fixed so that one version always gives the same graph
_VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder name, never a path


class VersionLoadError(EmbeddingError):
    """A published version is missing, incomplete or fails a consistency check."""

    exit_code = 1


class NoCurrentVersionError(VersionLoadError):
    """The publish root has no ``CURRENT`` yet: nothing has passed the quality gate."""


class Neighbor(NamedTuple):
    item_id: str
    score: float  # cosine similarity to the query item, in [-1, 1]
    market: str | None


@dataclass(frozen=True, eq=False)
class LoadedVersion:
    """One verified version held in memory; never mutated after ``load_version`` returns.

    ``vectors`` row ``i`` belongs to ``ids[i]`` and ``markets[i]``; ``row_of`` inverts ``ids``.
    ``index`` is an hnswlib index whose labels are row numbers, or None for exact search.
    """

    version: str
    path: Path
    manifest: Mapping[str, Any] = field(repr=False)
    ids: tuple[str, ...] = field(repr=False)
    row_of: Mapping[str, int] = field(repr=False)
    vectors: np.ndarray = field(repr=False)  # (n_items, dim) float32, read-only, unit rows
    markets: tuple[str | None, ...] = field(repr=False)
    index: Any = field(default=None, repr=False)  # hnswlib.Index | None

    @property
    def n_items(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def is_exact(self) -> bool:
        return self.index is None

    def similar(self, item_id: str, k: int) -> list[Neighbor]:
        """The ``k`` items most similar to ``item_id`` (itself excluded), best first.

        Fewer than ``k`` come back only when the version holds ``k`` items or fewer.

        Raises:
            KeyError: ``item_id`` is not in this version.
            ValueError: ``k`` is below 1.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        row = self.row_of[item_id]
        query = self.vectors[row]  # (dim,)
        n_fetch = min(k + 1, self.n_items)
        candidates = self._candidates(query, n_fetch)  # (<= n_fetch,) row numbers
        candidates = candidates[candidates != row]
        scores = self.vectors[candidates] @ query  # (len(candidates),) exact cosine
        ranked = sorted(
            zip(candidates.tolist(), scores.tolist(), strict=True),
            key=lambda pair: (-pair[1], self.ids[pair[0]]),  # ties broken by id: reproducible
        )
        return [Neighbor(self.ids[r], float(s), self.markets[r]) for r, s in ranked[:k]]

    def _candidates(self, query: np.ndarray, n_fetch: int) -> np.ndarray:
        if self.index is not None:
            try:
                labels, _ = self.index.knn_query(query, k=n_fetch, num_threads=1)
                return labels[0].astype(np.int64)
            except RuntimeError as exc:  # hnswlib found fewer than n_fetch: ef or M too small
                logger.warning(
                    "version %s: ANN query failed (%s); searching exactly", self.version, exc
                )
        scores = self.vectors @ query  # (n_items,)
        return np.argpartition(-scores, n_fetch - 1)[:n_fetch]


def read_current(publish_root: Path) -> str:
    """The version id named by ``<publish_root>/CURRENT``.

    Raises:
        NoCurrentVersionError: the file does not exist yet.
        VersionLoadError: the publish root is missing or CURRENT holds no valid version id.
    """
    if not publish_root.is_dir():
        raise VersionLoadError(
            f"publish root {publish_root} does not exist; pass the folder the pipeline publishes to"
        )
    current = publish_root / CURRENT_FILE
    if not current.is_file():
        raise NoCurrentVersionError(
            f"{current} does not exist: no version has been published to {publish_root} yet"
        )
    version = current.read_text().strip()
    if not _VERSION_ID.match(version):
        raise VersionLoadError(
            f"{current}: {version!r} is not a version id (expected e.g. 20260108-1a2b3c4d)"
        )
    return version


def load_version(
    publish_root: Path, version: str | None = None, cfg: ServingConfig | None = None
) -> LoadedVersion:
    """Read, verify and index one published version (``CURRENT``'s when ``version`` is None).

    ``cfg`` gives the HNSW parameters (defaults when None).

    Raises:
        NoCurrentVersionError: ``version`` is None and nothing has been published yet.
        VersionLoadError: the version is missing, its files do not match the manifest, or its
            vectors break the contract (dim, unit norm, unique non-null ids).
    """
    started = time.perf_counter()
    publish_root = Path(publish_root)
    if version is None:
        version = read_current(publish_root)
    elif not _VERSION_ID.match(version):
        raise VersionLoadError(f"{version!r} is not a version id (expected e.g. 20260108-1a2b3c4d)")
    version_dir = publish_root / VERSIONS_DIR / version
    if not version_dir.is_dir():
        raise VersionLoadError(
            f"version {version} not found: {version_dir} does not exist; "
            f"check {publish_root / CURRENT_FILE} or the version you asked for"
        )

    manifest = _read_manifest(version_dir, version)
    dim = _manifest_int(manifest, "dim", version_dir)
    vectors_path = version_dir / VECTORS_FILE
    _verify_checksums(vectors_path, manifest, version_dir)
    ids, vectors, markets = _read_vectors(vectors_path, dim)

    n_items = _manifest_int(manifest, "n_items", version_dir)
    if n_items != len(ids):
        raise VersionLoadError(
            f"{vectors_path}: {len(ids)} rows but manifest.json says n_items={n_items}"
        )
    row_of = _index_ids(ids, vectors_path)
    _check_unit_norm(vectors, ids, vectors_path)

    vectors.setflags(write=False)
    cfg = cfg or ServingConfig()
    index = None if len(ids) < EXACT_SEARCH_MAX_ITEMS else build_hnsw_index(vectors, cfg)
    loaded = LoadedVersion(
        version=version,
        path=version_dir,
        manifest=MappingProxyType(manifest),
        ids=tuple(ids),
        row_of=MappingProxyType(row_of),
        vectors=vectors,
        markets=tuple(markets),
        index=index,
    )
    logger.info(
        "loaded version %s: %d items, dim %d, %s search, in %.2f s",
        version,
        loaded.n_items,
        dim,
        "exact" if index is None else "hnsw",
        time.perf_counter() - started,
    )
    return loaded


def build_hnsw_index(vectors: np.ndarray, cfg: ServingConfig) -> Any:
    """An inner-product HNSW index over unit rows (so inner product = cosine); labels = rows.

    Built on one thread up to ``SINGLE_THREAD_MAX_ITEMS`` items with a fixed seed, which makes
    the graph (and so every answer) reproducible; above that, all cores, for build time.
    """
    n_items, dim = vectors.shape
    num_threads = 1 if n_items <= SINGLE_THREAD_MAX_ITEMS else -1  # -1: all cores
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(
        max_elements=n_items,
        ef_construction=cfg.hnsw_ef_construction,
        M=cfg.hnsw_m,
        random_seed=HNSW_RANDOM_SEED,
    )
    index.add_items(vectors, np.arange(n_items), num_threads=num_threads)
    index.set_ef(cfg.hnsw_ef_search)  # set once here; changing it while serving is not safe
    return index


def _read_manifest(version_dir: Path, version: str) -> dict[str, Any]:
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise VersionLoadError(f"{path} does not exist: version {version} is incomplete")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VersionLoadError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise VersionLoadError(f"{path}: expected a JSON object at the top level")
    if manifest.get("version", version) != version:
        raise VersionLoadError(
            f"{path}: says version {manifest['version']!r} but lives in folder {version!r}"
        )
    return manifest


def _manifest_int(manifest: Mapping[str, Any], key: str, version_dir: Path) -> int:
    value = manifest.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise VersionLoadError(
            f"{version_dir / MANIFEST_FILE}: '{key}' must be a positive integer, got {value!r}"
        )
    return value


def _expected_sha256(entry: Any) -> str | None:
    """The hex digest of a manifest ``files`` entry: "<hex>", "sha256:<hex>" or {"sha256": ...}."""
    if isinstance(entry, Mapping):
        entry = entry.get("sha256")
    if not isinstance(entry, str):
        return None
    return entry.removeprefix("sha256:").lower()


def _verify_checksums(vectors_path: Path, manifest: Mapping[str, Any], version_dir: Path) -> None:
    """Each file we read must match its sha256 in the manifest (a folder: each part file)."""
    files = manifest.get("files")
    if not isinstance(files, Mapping):
        raise VersionLoadError(
            f"{version_dir / MANIFEST_FILE}: no 'files' checksums; cannot verify {VECTORS_FILE}"
        )
    if vectors_path.is_dir():
        parts = sorted(p for p in vectors_path.rglob("*") if p.is_file() and _is_data_part(p))
        if not parts:
            raise VersionLoadError(f"{vectors_path}: folder holds no Parquet part files")
    elif vectors_path.is_file():
        parts = [vectors_path]
    else:
        raise VersionLoadError(f"{vectors_path} does not exist: the version is incomplete")
    for part in parts:
        name = part.relative_to(version_dir).as_posix()
        expected = _expected_sha256(files.get(name))
        if expected is None:
            raise VersionLoadError(
                f"{version_dir / MANIFEST_FILE}: no sha256 for {name} under 'files'"
            )
        actual = file_sha256(part)
        if actual != expected:
            raise VersionLoadError(
                f"{part}: sha256 {actual[:12]}… does not match manifest.json ({expected[:12]}…); "
                "the file was changed or truncated after publishing: republish this version"
            )


def _is_data_part(path: Path) -> bool:
    return not path.name.startswith(("_", ".")) and not path.name.endswith(".crc")


def _read_vectors(vectors_path: Path, dim: int) -> tuple[list[str], np.ndarray, list[str | None]]:
    """(ids, vectors (n, dim) float32, markets) from the Parquet file, shapes checked."""
    try:
        table = pq.read_table(vectors_path)
    except (OSError, pa.ArrowException) as exc:
        raise VersionLoadError(f"{vectors_path}: cannot read as Parquet ({exc})") from exc
    for column in ("item_id", "vector"):
        if column not in table.column_names:
            raise VersionLoadError(
                f"{vectors_path}: no '{column}' column (has {table.column_names})"
            )
    if table.num_rows == 0:
        raise VersionLoadError(f"{vectors_path}: holds no items")

    item_ids = table.column("item_id")
    if pa.types.is_dictionary(item_ids.type):
        item_ids = item_ids.cast(pa.string())
    if not (pa.types.is_string(item_ids.type) or pa.types.is_large_string(item_ids.type)):
        raise VersionLoadError(f"{vectors_path}: 'item_id' is {item_ids.type}, expected string")
    if item_ids.null_count:
        raise VersionLoadError(f"{vectors_path}: {item_ids.null_count} rows have a null item_id")
    vectors = _vectors_to_numpy(table.column("vector").combine_chunks(), dim, vectors_path)

    if "market" in table.column_names:
        markets = [None if m is None else str(m) for m in table.column("market").to_pylist()]
    else:
        markets = [None] * table.num_rows
    return item_ids.to_pylist(), vectors, markets


def _vectors_to_numpy(column: pa.Array, dim: int, vectors_path: Path) -> np.ndarray:
    value_type = getattr(column.type, "value_type", None)
    if value_type is None or not pa.types.is_floating(value_type):
        raise VersionLoadError(
            f"{vectors_path}: 'vector' is {column.type}, expected list<float32> of length {dim}"
        )
    if column.null_count:
        raise VersionLoadError(f"{vectors_path}: {column.null_count} rows have a null vector")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)  # (n_items,)
    if not np.all(lengths == dim):
        bad = int(np.flatnonzero(lengths != dim)[0])
        raise VersionLoadError(
            f"{vectors_path}: row {bad} has a vector of length {int(lengths[bad])}, "
            f"but manifest.json says dim={dim}"
        )
    values = column.flatten()
    if values.null_count:
        raise VersionLoadError(f"{vectors_path}: vectors hold {values.null_count} null values")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
    return flat.reshape(len(column), dim)  # (n_items, dim)


def _index_ids(ids: list[str], vectors_path: Path) -> dict[str, int]:
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    if len(row_of) != len(ids):
        duplicated = sorted(item_id for item_id, n in Counter(ids).items() if n > 1)
        raise VersionLoadError(
            f"{vectors_path}: {len(ids) - len(row_of)} duplicate item_id rows "
            f"(e.g. {duplicated[:5]}); each item must appear once"
        )
    return row_of


def _check_unit_norm(vectors: np.ndarray, ids: list[str], vectors_path: Path) -> None:
    norms = np.linalg.norm(vectors, axis=1)  # (n_items,)
    bad_rows = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))  # NaN counts as bad
    if bad_rows.size:
        examples = ", ".join(f"{ids[r]!r} (norm {norms[r]:.4g})" for r in bad_rows[:3])
        raise VersionLoadError(
            f"{vectors_path}: {bad_rows.size} of {len(ids)} vectors are not L2-normalised "
            f"(tolerance {NORM_TOLERANCE}), e.g. {examples}; the publisher must normalise them"
        )
