"""Load one published version of the item vectors into memory and answer neighbour queries.

Input: ``<publish_root>/versions/<version>/`` (CONTRACTS.md §2), the version named by
``CURRENT`` unless given. Output: a ``LoadedVersion``: ids, unit-norm float32 vectors, markets
and an index over them. Nothing is trusted blindly: the Parquet file must match the sha256 in
``manifest.json``, every vector must have the manifest's ``dim`` and unit L2 norm, and ids must
be unique; otherwise ``VersionLoadError`` says what is wrong and where.

The HNSW index (FAISS) comes prebuilt with the version when the publisher stored one
(``embedding.ann_index``: ``ann_index.faiss`` + ``ann_index.json``, checked against the
manifest's sha256 and against the vectors); a version without one gets an index built at load
time (a minute or two for a million items). A stored index that fails a
check refuses the whole version: the caller keeps serving the old one.
``LoadedVersion.index_source`` says which happened ("prebuilt", "built" or "exact": fewer than
``EXACT_SEARCH_MAX_ITEMS`` items are searched exactly with numpy, an index buys nothing there).

A query is answered in two steps: the index fetches ``max(k * candidate_factor, k + 10)``
candidates, which are re-scored exactly (cosine = dot product of unit vectors, so scores never
carry the index's approximation), filtered (market, exclude, blocklist, the query item itself),
and cut to ``k``. When filters leave fewer than ``k``, the fetch widens, and past
``MAX_ANN_FETCH`` candidates the filtered items are searched exactly, so ``k`` results come back
whenever ``k`` items pass the filters.

    loaded = load_version(Path("publish"), cfg=load_config("conf/default.yaml").serving)
    for item_id, score, market in loaded.similar("h123", k=10, market="paris"):
        ...
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.ann_index import EXACT_SEARCH_MAX_ITEMS as EXACT_SEARCH_MAX_ITEMS
from embedding.ann_index import INDEX_FILE, INDEX_META_FILE, AnnIndexError, build_index, load_index
from embedding.checksum import expected_sha256, file_sha256
from embedding.config import ServingConfig
from embedding.errors import EmbeddingError
from embedding.publish import CURRENT, MANIFEST, VERSIONS
from embedding.vectors_io import VECTORS_FILE
from serving.columns import IdColumn, IdIndex, MarketColumn

logger = logging.getLogger(__name__)

# the published layout's names come from the publisher (CONTRACTS §2)
CURRENT_FILE = CURRENT
VERSIONS_DIR = VERSIONS
MANIFEST_FILE = MANIFEST

NORM_TOLERANCE = 1e-3  # |‖v‖ - 1| above this means the publisher did not normalise
MIN_EXTRA_CANDIDATES = 10  # the ANN fetch is at least k + this
MAX_ANN_FETCH = 4096  # filters still short after this many candidates: search them exactly
_VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder name, never a path

IndexSource = Literal["prebuilt", "built", "exact"]
_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_ROWS.setflags(write=False)


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
    ``index`` is a ``faiss.IndexHNSWFlat`` whose labels are row numbers, or None for exact
    search;
    ``index_source`` says where it came from, ``index_load_s`` how long loading or building it
    took. Queries only read, so one instance serves concurrent requests.
    """

    version: str
    path: Path
    manifest: Mapping[str, Any] = field(repr=False)
    ids: Sequence[str] = field(repr=False)  # serving.columns.IdColumn as loaded
    row_of: Mapping[str, int] = field(repr=False)  # serving.columns.IdIndex as loaded
    vectors: np.ndarray = field(repr=False)  # (n_items, dim) float32, read-only, unit rows
    markets: Sequence[str | None] = field(repr=False)  # serving.columns.MarketColumn
    # (n_items,) bool, read-only: the publisher inferred the row's vector for a cold-start
    # item; None when the version's Parquet has no is_cold_start column
    is_cold_start: np.ndarray | None = field(default=None, repr=False)
    index: Any = field(default=None, repr=False)  # faiss.IndexHNSWFlat | None
    index_source: IndexSource = "exact"
    index_load_s: float = 0.0
    candidate_factor: int = 4  # ServingConfig.candidate_factor
    _market_codes: np.ndarray = field(init=False, repr=False)  # (n_items,) int32 per row
    _market_rows: Mapping[str | None, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.markets, MarketColumn):  # as loaded: codes already there
            codes, rows = self.markets.rows_by_market()
            object.__setattr__(self, "_market_codes", codes)
            object.__setattr__(self, "_market_rows", MappingProxyType(rows))
            return
        code_of: dict[str | None, int] = {}
        codes = np.fromiter(
            (code_of.setdefault(m, len(code_of)) for m in self.markets),
            dtype=np.int32,
            count=len(self.markets),
        )  # (n_items,)
        order = np.argsort(codes, kind="stable")  # rows grouped by market, ascending in each
        bounds = np.searchsorted(codes[order], np.arange(len(code_of) + 1))
        rows = {m: order[bounds[c] : bounds[c + 1]] for m, c in code_of.items()}
        codes.setflags(write=False)
        object.__setattr__(self, "_market_codes", codes)
        object.__setattr__(self, "_market_rows", MappingProxyType(rows))

    @property
    def n_items(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def is_exact(self) -> bool:
        return self.index is None

    def similar(
        self,
        item_id: str,
        k: int,
        market: str | None = None,
        exclude: Collection[str] = (),
        blocklist: Collection[str] = (),
        blocked_rows: np.ndarray = _NO_ROWS,
    ) -> list[Neighbor]:
        """The ``k`` items most similar to ``item_id`` (itself excluded), best first.

        Args:
            market: only items of this market (None: any market).
            exclude, blocklist: item ids never returned (e.g. already seen; withdrawn);
                ids not in this version are ignored.
            blocked_rows: sorted unique row numbers never returned, for a long blocklist
                turned into rows once (``serving.blocklist.Blocklist.rows_for``).

        Fewer than ``k`` come back only when fewer than ``k`` items pass the filters.

        Raises:
            KeyError: ``item_id`` is not in this version.
            ValueError: ``k`` is below 1.
        """
        row = self.row_of[item_id]
        drop_rows = self._drop_rows(exclude, blocklist, row)
        return self._search(self.vectors[row], k, market, drop_rows, blocked_rows)

    def similar_to_vector(
        self,
        vector: np.ndarray,
        k: int,
        market: str | None = None,
        exclude: Collection[str] = (),
        blocklist: Collection[str] = (),
        blocked_rows: np.ndarray = _NO_ROWS,
    ) -> list[Neighbor]:
        """The ``k`` items most similar to ``vector`` (normalised here), best first.

        Filters as in ``similar``; no item is excluded for being the query.

        Raises:
            ValueError: ``vector`` is not ``(dim,)``, holds NaN or inf, or is all zeros;
                ``k`` is below 1.
        """
        try:
            query = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"vector must be {self.dim} numbers ({exc})") from exc
        if query.shape != (self.dim,):
            raise ValueError(f"vector has shape {query.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(query)):
            raise ValueError("vector holds NaN or infinite values")
        norm = float(np.linalg.norm(query))
        if norm == 0.0:
            raise ValueError("vector is all zeros: it has no direction to compare")
        query = (query / norm).astype(np.float32)  # (dim,)
        return self._search(query, k, market, self._drop_rows(exclude, blocklist), blocked_rows)

    def _drop_rows(
        self, exclude: Collection[str], blocklist: Collection[str], query_row: int | None = None
    ) -> np.ndarray:
        """Sorted unique row numbers never returned: excluded and blocked ids, the query."""
        for name, ids in (("exclude", exclude), ("blocklist", blocklist)):
            if isinstance(ids, str):
                raise TypeError(f"{name} must be a collection of item ids, not the str {ids!r}")
        rows = [self.row_of[i] for i in (*exclude, *blocklist) if i in self.row_of]
        if query_row is not None:
            rows.append(query_row)
        return np.unique(np.asarray(rows, dtype=np.int64))  # (n_dropped,)

    def _search(
        self,
        query: np.ndarray,
        k: int,
        market: str | None,
        drop_rows: np.ndarray,
        blocked_rows: np.ndarray = _NO_ROWS,
    ) -> list[Neighbor]:
        """``drop_rows`` (few, per request) and ``blocked_rows`` (maybe many): sorted, unique."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        pool = None if market is None else self._market_rows.get(market)  # None: every row
        if market is not None and pool is None:
            return []  # no item of that market in this version
        pool_size = self.n_items if pool is None else len(pool)
        n_eligible = pool_size - int(
            np.isin(drop_rows, pool).sum() if pool is not None else len(drop_rows)
        )
        # n_eligible ignores blocked_rows: an upper bound; too few candidates widen the fetch
        if self.index is None or n_eligible <= k or pool_size < EXACT_SEARCH_MAX_ITEMS:
            return self._exact(query, k, pool, _union(drop_rows, blocked_rows))
        market_code = None if pool is None else int(self._market_codes[pool[0]])
        n_wanted = max(k * self.candidate_factor, k + MIN_EXTRA_CANDIDATES)
        # a market filter keeps about pool_size / n_items of the candidates: fetch that more
        n_fetch = min(-(-n_wanted * self.n_items // pool_size), self.n_items)
        while True:
            if n_fetch > MAX_ANN_FETCH:  # a rare market or a long exclude list: go exact
                return self._exact(query, k, pool, _union(drop_rows, blocked_rows))
            candidates = self._ann_candidates(query, n_fetch)  # (<= n_fetch,) row numbers
            if market_code is not None:
                candidates = candidates[self._market_codes[candidates] == market_code]
            candidates = candidates[
                _absent(candidates, drop_rows) & _absent(candidates, blocked_rows)
            ]
            if len(candidates) >= k or n_fetch >= self.n_items:
                return self._rank(query, candidates, k)
            n_fetch = min(2 * n_fetch, self.n_items)

    def _ann_candidates(self, query: np.ndarray, n_fetch: int) -> np.ndarray:
        # FAISS searches with the GIL released; -1 pads when it found fewer than n_fetch
        _, labels = self.index.search(query.reshape(1, -1), n_fetch)  # (1, n_fetch)
        return labels[0][labels[0] >= 0]

    def _exact(
        self, query: np.ndarray, k: int, pool: np.ndarray | None, drop_rows: np.ndarray
    ) -> list[Neighbor]:
        """Brute force over ``pool`` (None: every row) minus ``drop_rows``."""
        rows = np.arange(self.n_items) if pool is None else pool  # (n_pool,)
        if len(drop_rows):
            rows = rows[~np.isin(rows, drop_rows)]
        if len(rows) == 0:
            return []
        scores = (self.vectors if pool is None else self.vectors[rows]) @ query
        if pool is None and len(drop_rows):
            scores = scores[rows]
        if len(rows) > k:  # keep every row tied with the k-th, so ties break by id below
            kth = np.partition(-scores, k - 1)[k - 1]
            keep = np.flatnonzero(-scores <= kth)
            rows, scores = rows[keep], scores[keep]
        return self._ranked(rows, scores, k)

    def _rank(self, query: np.ndarray, candidates: np.ndarray, k: int) -> list[Neighbor]:
        scores = self.vectors[candidates] @ query  # (len(candidates),) exact cosine
        return self._ranked(candidates, scores, k)

    def _ranked(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[Neighbor]:
        order = np.argsort(-scores, kind="stable")  # best first
        rows, scores = rows[order], scores[order]
        if len(scores) > 1 and np.any(scores[1:] == scores[:-1]):  # ties: broken by id
            ranked = sorted(
                zip(rows.tolist(), scores.tolist(), strict=True),
                key=lambda pair: (-pair[1], self.ids[pair[0]]),  # reproducible
            )
        else:
            ranked = list(zip(rows[:k].tolist(), scores[:k].tolist(), strict=True))
        return [Neighbor(self.ids[r], s, self.markets[r]) for r, s in ranked[:k]]


def _absent(rows: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """(len(rows),) bool: each row is not in ``sorted_rows``; O(len(rows) log len(sorted_rows))."""
    if not len(sorted_rows):
        return np.ones(len(rows), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
    return sorted_rows[at] != rows


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a if not len(b) else (b if not len(a) else np.union1d(a, b))


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


def load_newest_valid(
    publish_root: Path, cfg: ServingConfig | None = None, skip: Collection[str] = ()
) -> LoadedVersion:
    """The newest version under ``versions/`` (by day, then name) that loads and verifies,
    ``skip`` aside: what the service starts on when ``CURRENT`` names a damaged version (a
    power cut during a publish). Each refused version is logged.

    Raises:
        VersionLoadError: no version loads.
    """
    folder = Path(publish_root) / VERSIONS_DIR
    names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    candidates = sorted(
        (n for n in names if _VERSION_ID.match(n) and n not in skip),
        key=lambda n: (n.split("-", 1)[0], n),
        reverse=True,
    )
    for version in candidates:
        try:
            return load_version(publish_root, version, cfg)
        except VersionLoadError as exc:
            logger.error("version %s cannot be served either: %s", version, exc)
    raise VersionLoadError(f"no version under {folder} loads and verifies")


def load_version(
    publish_root: Path, version: str | None = None, cfg: ServingConfig | None = None
) -> LoadedVersion:
    """Read, verify and index one published version (``CURRENT``'s when ``version`` is None).

    ``cfg`` gives the index parameters (defaults when None).

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
    ids, vectors, markets, cold_start = _read_vectors(vectors_path, dim)

    n_items = _manifest_int(manifest, "n_items", version_dir)
    if n_items != len(ids):
        raise VersionLoadError(
            f"{vectors_path}: {len(ids)} rows but manifest.json says n_items={n_items}"
        )
    row_of = _index_ids(ids, vectors_path)
    _check_unit_norm(vectors, ids, vectors_path)

    vectors.setflags(write=False)
    cfg = cfg or ServingConfig()
    index, index_source, index_load_s = _open_index(version_dir, manifest, vectors, cfg)
    loaded = LoadedVersion(
        version=version,
        path=version_dir,
        manifest=MappingProxyType(manifest),
        ids=ids,
        row_of=row_of,
        vectors=vectors,
        markets=markets,
        is_cold_start=cold_start,
        index=index,
        index_source=index_source,
        index_load_s=index_load_s,
        candidate_factor=cfg.candidate_factor,
    )
    logger.info(
        "loaded version %s: %d items, dim %d, %s index (%.2f s), in %.2f s",
        version,
        loaded.n_items,
        dim,
        index_source,
        index_load_s,
        time.perf_counter() - started,
    )
    return loaded


def _open_index(
    version_dir: Path, manifest: Mapping[str, Any], vectors: np.ndarray, cfg: ServingConfig
) -> tuple[Any, IndexSource, float]:
    """(index or None, where it came from, seconds spent) for the verified ``vectors``.

    A stored index is used only when the manifest lists both its files with a sha256 they
    match, and its metadata matches the vectors; a listed file that fails refuses the version,
    an unlisted one is ignored and the index is built from the vectors.
    """
    n_items, dim = vectors.shape
    if n_items < EXACT_SEARCH_MAX_ITEMS:
        return None, "exact", 0.0
    started = time.perf_counter()
    stored = [version_dir / name for name in (INDEX_FILE, INDEX_META_FILE)]
    if not any(path.exists() for path in stored):
        logger.warning(
            "version %s has no prebuilt ANN index (%s): building one over %d items now; "
            "publish the index with the version to make loading fast",
            version_dir.name,
            INDEX_FILE,
            n_items,
        )
        index = build_index(vectors, cfg)
        return index, "built", time.perf_counter() - started
    files = manifest["files"]  # a Mapping: _verify_checksums checked it
    unlisted = [path.name for path in stored if path.name not in files]
    if unlisted:
        # an index nobody vouched for is never loaded (a crafted one could answer other
        # rows than the vectors say): it is rebuilt from the verified vectors
        logger.warning(
            "version %s: %s not listed with a checksum under 'files' in %s; not loaded, "
            "building the index from the verified vectors instead",
            version_dir.name,
            ", ".join(unlisted),
            MANIFEST_FILE,
        )
        index = build_index(vectors, cfg)
        return index, "built", time.perf_counter() - started
    for path in stored:
        _verify_file(path, files[path.name], version_dir)
    try:
        index = load_index(version_dir, n_items, dim, cfg)
    except AnnIndexError as exc:
        raise VersionLoadError(
            f"version {version_dir.name}: the prebuilt ANN index is unusable: {exc}"
        ) from exc
    if index is None:  # removed between the check and the load
        raise VersionLoadError(f"{version_dir / INDEX_FILE}: disappeared while loading")
    return index, "prebuilt", time.perf_counter() - started


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
        expected = expected_sha256(files.get(name))
        if expected is None:
            raise VersionLoadError(
                f"{version_dir / MANIFEST_FILE}: no sha256 for {name} under 'files'"
            )
        _verify_file(part, expected, version_dir)


def _verify_file(path: Path, entry: Any, version_dir: Path) -> None:
    """``path`` exists and its sha256 is the one of its manifest ``files`` entry."""
    expected = expected_sha256(entry)
    if expected is None:
        raise VersionLoadError(
            f"{version_dir / MANIFEST_FILE}: the 'files' entry of "
            f"{path.relative_to(version_dir).as_posix()} holds no sha256 ({entry!r})"
        )
    if not path.is_file():
        raise VersionLoadError(f"{path}: listed in {MANIFEST_FILE} but missing: incomplete")
    actual = file_sha256(path)
    if actual != expected:
        raise VersionLoadError(
            f"{path}: sha256 {actual[:12]}… does not match manifest.json ({expected[:12]}…); "
            "the file was changed or truncated after publishing: republish this version"
        )


def _is_data_part(path: Path) -> bool:
    return not path.name.startswith(("_", ".")) and not path.name.endswith(".crc")


def _read_vectors(
    vectors_path: Path, dim: int
) -> tuple[IdColumn, np.ndarray, MarketColumn, np.ndarray | None]:
    """(ids, vectors (n, dim) float32, markets, is_cold_start (n,) bool or None) from Parquet."""
    try:
        # one thread: Arrow's thread pool would compete with the requests served meanwhile,
        # and its hand-over holds the GIL for tens of ms at 1M rows (max 60 ms vs 1 ms)
        table = pq.read_table(vectors_path, use_threads=False)
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

    market = table.column("market") if "market" in table.column_names else None
    try:
        ids = IdColumn.from_arrow(item_ids)
        markets = MarketColumn.from_arrow(market, table.num_rows)
    except (ValueError, pa.ArrowException) as exc:
        raise VersionLoadError(f"{vectors_path}: {exc}") from exc
    return ids, vectors, markets, _cold_start_flags(table, vectors_path)


def _cold_start_flags(table: pa.Table, vectors_path: Path) -> np.ndarray | None:
    """The optional ``is_cold_start`` column as a read-only bool array (null: False)."""
    if "is_cold_start" not in table.column_names:
        return None
    column = table.column("is_cold_start")
    if not pa.types.is_boolean(column.type):
        raise VersionLoadError(f"{vectors_path}: 'is_cold_start' is {column.type}, expected bool")
    flags = column.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)  # (n_items,)
    flags.setflags(write=False)
    return flags


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


def _index_ids(ids: IdColumn, vectors_path: Path) -> IdIndex:
    try:
        return ids.index()
    except ValueError as exc:  # duplicated ids, named
        raise VersionLoadError(f"{vectors_path}: {exc}; each item must appear once") from exc


def _check_unit_norm(vectors: np.ndarray, ids: list[str], vectors_path: Path) -> None:
    norms = np.linalg.norm(vectors, axis=1)  # (n_items,)
    bad_rows = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))  # NaN counts as bad
    if bad_rows.size:
        examples = ", ".join(f"{ids[r]!r} (norm {norms[r]:.4g})" for r in bad_rows[:3])
        raise VersionLoadError(
            f"{vectors_path}: {bad_rows.size} of {len(ids)} vectors are not L2-normalised "
            f"(tolerance {NORM_TOLERANCE}), e.g. {examples}; the publisher must normalise them"
        )
