"""Count-based baselines: item co-occurrence counts, a co-occurrence ranker and PPMI-SVD vectors.

Input: training sessions (ordered item ids) and, for ranking, training item counts and next-item
cases ``(a, b)``. Output: sorted item ids with a symmetric sparse co-occurrence matrix; the
0-based rank of each case's target under "items seen with the query, backed off to popularity"
(``MISS`` where it cannot be ranked, as in ``embedding.quality.evaluate``); and ``ItemVectors``
from a
truncated SVD of the positive PMI matrix (Levy, Goldberg & Dagan, TACL 2015), the classic
count-based rival of skip-gram. Pure functions, no I/O; ``evaluate`` can rank with them beside
the learned vectors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from embedding.vectors.item_vectors import ItemVectors, normalize_rows

logger = logging.getLogger(__name__)

SVD_TOL = 1e-3  # ARPACK's relative accuracy of the singular values
MISS = np.iinfo(
    np.int64
).max  # same marker as embedding.quality.evaluate.MISS (not imported: no cycle)


def cooccurrence_counts(
    sessions: Iterable[Sequence[str]], window: int
) -> tuple[list[str], sp.csr_matrix]:
    """Sorted item ids and the symmetric (n_items, n_items) float64 co-occurrence matrix.

    Entry (i, j) counts the position pairs of one session, at distance 1..``window``, holding
    items i and j; each pair counts once in (i, j) and once in (j, i). Pairs of an item with
    itself (a repeat) are left out, so the diagonal is empty. ``sessions`` is read once.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    flat: list[str] = []
    lengths: list[int] = []
    for items in sessions:
        flat.extend(items)
        lengths.append(len(items))
    ids = sorted(set(flat))
    index = {item: row for row, item in enumerate(ids)}
    codes = np.fromiter((index[item] for item in flat), dtype=np.int64, count=len(flat))
    session_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (n_occurrences,)
    rows, cols = [], []
    for offset in range(1, min(window, max(lengths, default=0) - 1) + 1):
        left, right = codes[:-offset], codes[offset:]
        keep = (session_of[:-offset] == session_of[offset:]) & (left != right)
        rows += [left[keep], right[keep]]
        cols += [right[keep], left[keep]]
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    data = np.ones(row.size, dtype=np.float64)
    counts = sp.coo_matrix((data, (row, col)), shape=(len(ids), len(ids))).tocsr()
    counts.sum_duplicates()
    return ids, counts


def popularity_positions(ids: Sequence[str], popularity: Mapping[str, int]) -> np.ndarray:
    """Position of each of ``ids`` in the order (popularity descending, id ascending).

    Items absent from ``popularity`` count as 0. Returns (n_items,) int64, a permutation.
    """
    pop = [popularity.get(item, 0) for item in ids]
    order = sorted(range(len(ids)), key=lambda row: (-pop[row], ids[row]))
    positions = np.empty(len(ids), dtype=np.int64)
    positions[order] = np.arange(len(ids), dtype=np.int64)
    return positions


def cooccurrence_ranks(
    ids: Sequence[str],
    counts: sp.spmatrix | sp.sparray,
    popularity: Mapping[str, int],
    cases: Sequence[tuple[str, str]],
) -> np.ndarray:
    """0-based rank of each case's target among ``ids`` for query ``a``, ``a`` itself excluded.

    Items are ordered by co-occurrence count with ``a`` (descending), then popularity
    (descending), then id (ascending); an unknown ``a`` leaves popularity order alone. MISS
    where ``b`` is not in ``ids`` or ``b == a``. ``counts`` is the (n_items, n_items) matrix of
    ``cooccurrence_counts``; nonpositive entries and the diagonal are ignored.

    Nothing is sorted per case: the nonzeros are sorted once by (row, key), so a target seen
    with ``a`` reads its rank off its place in ``a``'s row, and an unseen target's rank is
    everything seen with ``a`` plus the unseen items ahead of it in popularity order.
    """
    n_items = len(ids)
    counts = sp.csr_matrix(counts, copy=True)  # sum_duplicates below must not touch the input
    if counts.shape != (n_items, n_items):
        raise ValueError(f"counts has shape {counts.shape}, expected {(n_items, n_items)}")
    index = {item: i for i, item in enumerate(ids)}
    query = np.fromiter((index.get(a, -1) for a, _ in cases), dtype=np.int64, count=len(cases))
    target = np.fromiter((index.get(b, -1) for _, b in cases), dtype=np.int64, count=len(cases))
    ranks = np.full(len(cases), MISS, dtype=np.int64)
    position = popularity_positions(ids, popularity)
    rankable = (target >= 0) & (query != target)
    unknown = rankable & (query < 0)
    ranks[unknown] = position[target[unknown]]

    is_queried = np.zeros(n_items, dtype=bool)
    is_queried[query[rankable & (query >= 0)]] = True
    counts.sum_duplicates()
    coo = counts.tocoo()  # canonical CSR: rows in order, columns sorted within a row
    keep = (coo.data > 0) & (coo.row != coo.col) & is_queried[coo.row]
    row, col, val = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep]
    row_start = np.searchsorted(row, np.arange(n_items + 1))  # (n_items + 1,) like indptr
    by_key = _sort_rows_by_key(row, val, position[col])  # each row: best first
    place_in_row = np.empty(row.size, dtype=np.int64)
    place_in_row[by_key] = np.arange(row.size) - row_start[row[by_key]]
    entry_key = row * n_items + col  # ascending
    row_then_position = np.sort(row * n_items + position[col])

    known = np.flatnonzero(rankable & (query >= 0))
    a, b = query[known], target[known]
    pair = a * n_items + b
    hit = np.searchsorted(entry_key, pair)
    is_seen = hit < row.size
    is_seen[is_seen] = entry_key[hit[is_seen]] == pair[is_seen]
    n_seen = row_start[a + 1] - row_start[a]
    seen_ahead = np.searchsorted(row_then_position, a * n_items + position[b]) - row_start[a]
    unseen_ahead = position[b] - seen_ahead - (position[a] < position[b])
    ranks[known] = n_seen + unseen_ahead
    ranks[known[is_seen]] = place_in_row[hit[is_seen]]
    return ranks


def _sort_rows_by_key(row: np.ndarray, val: np.ndarray, pop_position: np.ndarray) -> np.ndarray:
    """Order of the entries by (row, value descending, popularity position); keys are unique.

    One int64 key and an unstable argsort (several times faster than ``lexsort`` at 10M
    entries); ``lexsort`` only where that key would overflow.
    """
    _, value_rank = np.unique(-val, return_inverse=True)  # 0 for the highest count
    n_values, n_positions = int(value_rank.max(initial=0)) + 1, int(pop_position.max(initial=0)) + 1
    if (int(row.max(initial=0)) + 1) * n_values * n_positions >= np.iinfo(np.int64).max:
        return np.lexsort((pop_position, value_rank, row))
    key = (row * n_values + value_rank) * n_positions + pop_position
    return np.argsort(key)


def ppmi_matrix(counts: sp.csr_matrix, cds_alpha: float, shift_k: float) -> sp.csr_matrix:
    """Shifted positive PMI with context-distribution smoothing, on the nonzeros of ``counts``."""
    coo = sp.coo_matrix(counts)
    coo.sum_duplicates()
    positive = coo.data > 0
    row, col, n_ij = coo.row[positive], coo.col[positive], coo.data[positive]
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel().clip(0.0, None) ** cds_alpha
    p_context = context / context.sum() if context.sum() > 0 else context
    pmi = np.log(n_ij) - np.log(row_sum[row]) - np.log(p_context[col]) - np.log(shift_k)
    keep = pmi > 0
    ppmi = sp.coo_matrix((pmi[keep], (row[keep], col[keep])), shape=counts.shape).tocsr()
    ppmi.sum_duplicates()
    return ppmi


def ppmi_svd_vectors(
    ids: Sequence[str],
    counts: sp.spmatrix | sp.sparray,
    dim: int,
    cds_alpha: float = 0.75,
    shift_k: float = 1.0,
    seed: int = 0,
    item_counts: np.ndarray | None = None,
) -> ItemVectors:
    """Item vectors from a truncated SVD of the shifted positive PMI of ``counts``.

    PMI(i, j) = log(n_ij / (n_i * P_alpha(j))), where n_i is row i's sum and the context
    distribution P_alpha(j) is column sums raised to ``cds_alpha`` (0.75 as word2vec's
    negative sampling: rare contexts get less inflated PMI), renormalised. ``log(shift_k)`` is
    subtracted (as k negative samples) and negatives are clipped to 0; only nonzeros are touched,
    so the matrix stays sparse. Vectors are U * sqrt(S) (eigenvalue weighting 0.5) of the top
    ``min(dim, n_items - 1)`` singular triplets, sorted by singular value, signs fixed so each
    column's largest-magnitude entry is positive, rows L2-normalised (rows without any positive
    PMI stay zero), float32. ARPACK starts from a vector drawn with ``seed``, so reruns agree.

    Args:
        item_counts: (n_items,) int64 occurrences to store in ``ItemVectors.counts``; the row
            sums of ``counts`` when None.
    """
    n_items = len(ids)
    if n_items < 2:
        raise ValueError(f"ppmi_svd_vectors needs at least 2 items, got {n_items}")
    if dim < 1 or cds_alpha <= 0 or shift_k <= 0:
        raise ValueError(
            f"need dim >= 1, cds_alpha > 0 and shift_k > 0; got {dim}, {cds_alpha}, {shift_k}"
        )
    counts = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    if counts.shape != (n_items, n_items):
        raise ValueError(f"counts has shape {counts.shape}, expected {(n_items, n_items)}")
    if item_counts is not None and np.shape(item_counts) != (n_items,):
        raise ValueError(f"item_counts has shape {np.shape(item_counts)}, expected {(n_items,)}")
    started = time.monotonic()
    ppmi = ppmi_matrix(counts, cds_alpha, shift_k)
    k = min(dim, n_items - 1)
    if ppmi.nnz == 0:
        vectors = np.zeros((n_items, k), dtype=np.float32)
    else:
        v0 = np.random.default_rng(seed).standard_normal(n_items)
        # a loose tolerance: neighbour rankings settle long before the singular values do
        u, s, _ = svds(ppmi, k=k, v0=v0, solver="arpack", tol=SVD_TOL)
        order = np.argsort(-s, kind="stable")
        u, s = u[:, order], np.clip(s[order], 0.0, None)
        signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(k)])
        vectors = normalize_rows(u * np.where(signs == 0, 1.0, signs) * np.sqrt(s))
    logger.info(
        "ppmi-svd: %d x %d counts, nnz %d (ppmi nnz %d), dim %d in %.2f s",
        n_items,
        n_items,
        counts.nnz,
        ppmi.nnz,
        k,
        time.monotonic() - started,
    )
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    stored = item_counts if item_counts is not None else np.rint(row_sums)
    return ItemVectors(ids=list(ids), vectors=vectors, counts=np.asarray(stored, dtype=np.int64))
