"""Load one published version of the item vectors into memory and answer neighbour queries.

Input: ``<publish_root>/versions/<version>/`` (CONTRACTS.md §2), the version named by
``CURRENT`` unless given. Output: a ``LoadedVersion``: ids, unit-norm float32 vectors, markets
and an index over them. Nothing is trusted blindly: the Parquet file must match the sha256 in
``manifest.json``, every vector must have the manifest's ``dim`` and unit L2 norm, and ids must
be unique; otherwise ``VersionLoadError`` says what is wrong and where. Reading and checking the
files, and opening the HNSW index (FAISS; prebuilt with the version, or built at load time), is
``serving.loading``'s: ``LoadedVersion.index_source`` says which happened ("prebuilt", "built"
or "exact": fewer than ``EXACT_SEARCH_MAX_ITEMS`` items are searched exactly with numpy).

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

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from embedding.core.config import ServingConfig
from embedding.vectors.ann_index import EXACT_SEARCH_MAX_ITEMS as EXACT_SEARCH_MAX_ITEMS
from embedding.vectors.versions import (
    VERSIONS,
    VersionError,
    verify_version,
    version_folder,
    version_names,
)
from embedding.vectors.versions import NoCurrentVersionError as NoCurrentVersionError
from embedding.vectors.versions import read_current as read_current
from serving.columns import MarketColumn
from serving.loading import IndexSource, read_version

logger = logging.getLogger(__name__)


MIN_EXTRA_CANDIDATES = 10  # the ANN fetch is at least k + this
MAX_ANN_FETCH = 4096  # filters still short after this many candidates: search them exactly

_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_ROWS.setflags(write=False)


# the one verdict on a published version (embedding.vectors.versions), under its serving name
VersionLoadError = VersionError


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


def load_newest_valid(
    publish_root: Path, cfg: ServingConfig | None = None, skip: Collection[str] = ()
) -> LoadedVersion:
    """The newest version under ``versions/`` (by day, then name) that loads and verifies,
    ``skip`` aside: what the service starts on when ``CURRENT`` names a damaged version (a
    power cut during a publish). Each refused version is logged.

    Raises:
        VersionLoadError: no version loads.
    """
    candidates = [
        n for n in reversed(version_names(Path(publish_root))) if n not in skip
    ]  # newest first
    for version in candidates:
        try:
            return load_version(publish_root, version, cfg)
        except VersionLoadError as exc:
            logger.error("version %s cannot be served either: %s", version, exc)
    raise VersionLoadError(f"no version under {Path(publish_root) / VERSIONS} loads and verifies")


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
    version_dir = version_folder(publish_root, version)
    manifest = verify_version(version_dir)  # every file listed and matching its sha256
    cfg = cfg or ServingConfig()
    columns, index, index_source, index_load_s = read_version(version_dir, manifest, cfg)
    loaded = LoadedVersion(
        version=version,
        path=version_dir,
        manifest=MappingProxyType(manifest),
        ids=columns.ids,
        row_of=columns.row_of,
        vectors=columns.vectors,
        markets=columns.markets,
        is_cold_start=columns.is_cold_start,
        index=index,
        index_source=index_source,
        index_load_s=index_load_s,
        candidate_factor=cfg.candidate_factor,
    )
    logger.info(
        "loaded version %s: %d items, dim %d, %s index (%.2f s), in %.2f s",
        version,
        loaded.n_items,
        loaded.dim,
        index_source,
        index_load_s,
        time.perf_counter() - started,
    )
    return loaded
