"""Booking-time evaluation: where the booked item lands when vectors re-rank or retrieve.

Input: the ``conversions`` table of ``jobs.sessionize`` (one row per booking event:
``booked_item``; ``context_items``, the distinct items the session touched before it, most recent
first; ``shown_items``, what was on screen, in on-screen order, or null), candidate
``ItemVectors`` and training popularity. Output: plain metric dicts, nothing written.

``impression_rerank`` follows the trivago RecSys Challenge 2019 protocol: re-order the items on
screen at the booking (on-screen order, popularity, the "interacted first" session heuristic, each
candidate's vectors, the heuristic with vectors behind it) and record the booked item's 1-based
rank. ``booked_item_ranks`` follows Airbnb's KDD'18 offline check: the booked item's rank among
all items by cosine to each item clicked before it, by click position.

Every re-ranking is a stable sort by a key, so ties keep the on-screen order. No list is sorted:
the rank is 1 + the number of items ahead of the booked one, counted over flat (case, slot) arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.vectors.item_vectors import ItemVectors

logger = logging.getLogger(__name__)

MISS = np.iinfo(
    np.int64
).max  # as embedding.quality.evaluate.MISS; kept here so evaluate can import us
BASE_METHODS = ("onscreen", "popularity", "session")
BY_POSITION_KEYS = ("n", "covered", "hr@10", "mrr@20", "mean_rank")
CHUNK = 1 << 16  # flat elements gathered at once when scoring with vectors


@dataclass(frozen=True)
class FlatLists:
    """A list column, flattened: element i is item ``code[i]`` at 0-based ``slot[i]`` of row
    ``parent[i]``. Codes index the call's vocabulary; -1 is a null item."""

    parent: np.ndarray  # (m,) int64, non-decreasing
    slot: np.ndarray  # (m,) int64
    code: np.ndarray  # (m,) int64

    def take_rows(self, keep: np.ndarray) -> FlatLists:
        """Only the elements of rows where ``keep`` (bool per row) holds, rows renumbered."""
        new_row = np.cumsum(keep) - 1
        mask = keep[self.parent]
        return FlatLists(new_row[self.parent[mask]], self.slot[mask], self.code[mask])


def _flatten(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Values, parent row and slot of a list<string> column; null lists contribute nothing."""
    lists = column.cast(pa.list_(pa.large_string())).combine_chunks()
    values = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
    slot = np.arange(parent.size, dtype=np.int64) - np.searchsorted(parent, parent, side="left")
    return values, parent, slot


def encode_items(
    conversions: pa.Table, list_columns: Sequence[str]
) -> tuple[list[str], np.ndarray, list[FlatLists]]:
    """One vocabulary for ``booked_item`` and the list columns: (vocabulary, booked codes per
    row, one ``FlatLists`` per list column)."""
    booked = conversions.column("booked_item").cast(pa.large_string()).combine_chunks()
    flattened = [_flatten(conversions.column(name)) for name in list_columns]
    values = pa.concat_arrays([*(v for v, _, _ in flattened), booked])
    encoded = values.dictionary_encode()
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    lists, start = [], 0
    for v, parent, slot in flattened:
        lists.append(FlatLists(parent, slot, codes[start : start + len(v)]))
        start += len(v)
    return encoded.dictionary.to_pylist(), codes[start:], lists


def vector_rows(vocabulary: list[str], vectors: ItemVectors) -> np.ndarray:
    """Row of each vocabulary item in ``vectors`` (-1 without a vector), with a -1 appended so
    that indexing with code -1 (a null item) also gives -1."""
    index = vectors.index()
    return np.array([index.get(item, -1) for item in vocabulary] + [-1], dtype=np.int64)


def target_ranks(
    case: np.ndarray, slot: np.ndarray, target: np.ndarray, keys: Sequence[np.ndarray]
) -> np.ndarray:
    """1-based rank of each case's target after a stable sort by ``keys`` (lexicographic, each
    descending) with ties in slot order; ``target`` is the target's element index per case.

    Element arrays are flat, (m,); ``case`` is non-decreasing and ``target`` (n_cases,).
    """
    ahead = slot < slot[target][case]
    for key in reversed(keys):
        key_of_target = key[target][case]
        ahead = (key > key_of_target) | ((key == key_of_target) & ahead)
    return 1 + np.bincount(case[ahead], minlength=target.size).astype(np.int64)


def interaction_recency(shown: FlatLists, context: FlatLists, n_vocabulary: int) -> np.ndarray:
    """Per shown element: its 0-based recency in the same case's context (0 = the most recent
    item before the booking), or -1 when the session had not interacted with it."""
    recency = np.full(shown.code.size, -1, dtype=np.int64)
    known = context.code >= 0
    context_key = context.parent[known] * n_vocabulary + context.code[known]
    order = np.lexsort((context.slot[known], context_key))  # a repeated item: most recent first
    context_key, context_slot = context_key[order], context.slot[known][order]
    if context_key.size == 0:
        return recency
    shown_key = shown.parent * n_vocabulary + shown.code
    pos = np.minimum(np.searchsorted(context_key, shown_key), context_key.size - 1)
    found = (context_key[pos] == shown_key) & (shown.code >= 0)
    recency[found] = context_slot[pos[found]]
    return recency


def sum_rows_per_case(
    table: np.ndarray, row: np.ndarray, case: np.ndarray, n_cases: int
) -> np.ndarray:
    """(n_cases, dim) sums of ``table[row]`` per case, in the table's dtype; ``case`` is
    non-decreasing, so each case is one contiguous run, summed by ``reduceat`` a bounded block
    at a time (a case's sum is the same whatever the block size)."""
    sums = np.zeros((n_cases, table.shape[1]), dtype=table.dtype)
    starts = np.flatnonzero(np.diff(case, prepend=-1))  # first element of each case's run
    group = 0
    while group < starts.size:
        end = max(group + 1, int(np.searchsorted(starts, starts[group] + CHUNK)))
        first = starts[group]
        last = starts[end] if end < starts.size else case.size
        block = table[row[first:last]]  # (last - first, dim)
        runs = starts[group:end] - first
        sums[case[starts[group:end]]] = np.add.reduceat(block, runs, axis=0)
        group = end
    return sums


def mean_cosine_scores(
    table: np.ndarray,
    shown_row: np.ndarray,
    shown_case: np.ndarray,
    context_row: np.ndarray,
    context_case: np.ndarray,
    n_cases: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per shown element: mean cosine to its case's context items that have vectors, and
    whether it has a score (it has a vector and so does at least one context item).

    Rows index ``table`` (L2-normalised), -1 without a vector. A context item shown again
    counts too (cosine 1 with itself).
    """
    has_vector = context_row >= 0
    context_case, context_row = context_case[has_vector], context_row[has_vector]
    n_context = np.bincount(context_case, minlength=n_cases)
    centroids = sum_rows_per_case(table, context_row, context_case, n_cases)  # (n_cases, dim)
    centroids /= np.maximum(n_context, 1)[:, None]
    has_score = (shown_row >= 0) & (n_context[shown_case] > 0)
    scored = np.flatnonzero(has_score)
    scores = np.zeros(shown_row.size, dtype=np.float64)
    for start in range(0, scored.size, CHUNK):
        idx = scored[start : start + CHUNK]
        scores[idx] = np.einsum("ij,ij->i", table[shown_row[idx]], centroids[shown_case[idx]])
    return scores, has_score


def rerank_metrics(ranks: np.ndarray) -> dict:
    """MRR (no cut-off), HR@1 and HR@5 of 1-based ranks."""
    if ranks.size == 0:
        return {"mrr": 0.0, "hr@1": 0.0, "hr@5": 0.0, "n": 0}
    return {
        "mrr": float(np.mean(1.0 / ranks)),
        "hr@1": float(np.mean(ranks <= 1)),
        "hr@5": float(np.mean(ranks <= 5)),
        "n": int(ranks.size),
    }


def _check_candidate_names(candidates: Mapping[str, ItemVectors]) -> None:
    clashes = [n for n in candidates if n in BASE_METHODS or n.startswith("session+")]
    if clashes:
        raise ValueError(
            f"candidate names {clashes} clash with the re-rank methods {list(BASE_METHODS)} "
            "or their 'session+<name>' entries; rename the candidates"
        )


def impression_rerank(
    conversions: pa.Table, candidates: Mapping[str, ItemVectors], popularity: Mapping[str, int]
) -> dict:
    """Re-rank what was on screen at each booking; MRR, HR@1, HR@5 of the booked item per method.

    A case is a conversion whose ``shown_items`` contains ``booked_item`` (its first occurrence
    is the target); the others are counted as ``n_no_impressions`` (null or empty list) or
    ``n_target_not_shown``. Methods, each a stable sort (ties keep the on-screen order):
    ``onscreen`` as shown; ``popularity`` by ``popularity`` descending (unknown items 0);
    ``session`` the items interacted with before the booking first, most recent first, then the
    rest; ``<name>`` per candidate, scored items (mean cosine to the context items that have
    vectors) by score, then the unscored; ``session+<name>`` the session's interacted items
    first, then the rest as ``<name>``. A candidate's entry also has ``coverage``: the share of
    cases where at least one shown item got a score.

    Returns:
        ``{"n_cases", "n_no_impressions", "n_target_not_shown", "methods": {name: {"mrr",
        "hr@1", "hr@5", "n"[, "coverage"]}}}``, methods in the order above.
    """
    started = time.monotonic()
    _check_candidate_names(candidates)
    vocabulary, booked, (shown_all, context_all) = encode_items(
        conversions, ["shown_items", "context_items"]
    )
    n_shown = np.bincount(shown_all.parent, minlength=conversions.num_rows)
    is_target = (shown_all.code == booked[shown_all.parent]) & (shown_all.code >= 0)
    first_target = np.full(conversions.num_rows, -1, dtype=np.int64)
    target_rows, first = np.unique(shown_all.parent[is_target], return_index=True)
    first_target[target_rows] = np.flatnonzero(is_target)[first]
    is_case = first_target >= 0
    shown, context = shown_all.take_rows(is_case), context_all.take_rows(is_case)
    n_cases = int(is_case.sum())
    # the target's element index among the cases' elements: shift by the rows dropped before it
    target = first_target[is_case] - np.cumsum(np.where(is_case, 0, n_shown))[is_case]

    def ranks(*keys: np.ndarray) -> np.ndarray:
        return target_ranks(shown.parent, shown.slot, target, keys)

    counts = np.array([popularity.get(item, 0) for item in vocabulary] + [0], dtype=np.int64)
    recency = interaction_recency(shown, context, len(vocabulary))
    interacted = (recency >= 0).astype(np.int64)
    more_recent = np.where(recency >= 0, -recency, 0)
    methods = {
        "onscreen": rerank_metrics(ranks()),
        "popularity": rerank_metrics(ranks(counts[shown.code])),
        "session": rerank_metrics(ranks(interacted, more_recent)),
    }
    blended = {}
    for name, vectors in candidates.items():
        rows = vector_rows(vocabulary, vectors)
        scores, has_score = mean_cosine_scores(
            vectors.vectors,
            rows[shown.code],
            shown.parent,
            rows[context.code],
            context.parent,
            n_cases,
        )
        scored = has_score.astype(np.int64)
        n_covered = int(np.count_nonzero(np.bincount(shown.parent[has_score], minlength=n_cases)))
        methods[name] = {
            **rerank_metrics(ranks(scored, scores)),
            "coverage": n_covered / n_cases if n_cases else 0.0,
        }
        blended[f"session+{name}"] = rerank_metrics(ranks(interacted, more_recent, scored, scores))
    methods.update(blended)
    n_no_impressions = int(np.sum(n_shown == 0))
    result = {
        "n_cases": n_cases,
        "n_no_impressions": n_no_impressions,
        "n_target_not_shown": conversions.num_rows - n_cases - n_no_impressions,
        "methods": methods,
    }
    logger.info(
        "impression re-rank: %d cases of %d conversions (%d without impressions, %d booked item "
        "not shown), %d methods in %.2f s",
        n_cases, conversions.num_rows, n_no_impressions, result["n_target_not_shown"],
        len(methods), time.monotonic() - started,
    )  # fmt: skip
    return result


def cosine_ranks(
    table: np.ndarray, query: np.ndarray, target: np.ndarray, batch_size: int = 2048
) -> np.ndarray:
    """0-based rank of ``target`` among all rows of ``table`` by cosine to ``query`` (the query
    itself excluded); MISS where either row is -1. Repeated (query, target) pairs are scored
    once, and each batch's distinct queries once, by a matrix product with the whole table
    (as evaluate.embedding_ranks)."""
    ranks = np.full(query.size, MISS, dtype=np.int64)
    covered = (query >= 0) & (target >= 0)
    if not covered.any():
        return ranks
    n_items = table.shape[0]
    pairs, inverse = np.unique(query[covered] * n_items + target[covered], return_inverse=True)
    unique_ranks = np.empty(pairs.size, dtype=np.int64)
    for start in range(0, pairs.size, batch_size):
        q, t = np.divmod(pairs[start : start + batch_size], n_items)  # sorted by query
        queries, row_of = np.unique(q, return_inverse=True)
        scores = table[queries] @ table.T  # (u, n_items), one row per distinct query
        scores[np.arange(queries.size), queries] = -np.inf
        target_scores = scores[row_of, t][:, None]  # (c, 1)
        if queries.size < q.size:
            scores = scores[row_of]  # (c, n_items)
        ahead = scores > target_scores  # (c, n_items)
        unique_ranks[start : start + batch_size] = np.count_nonzero(ahead, axis=1)
    ranks[covered] = unique_ranks[inverse.ravel()]
    return ranks


def booked_ranks_metrics(ranks: np.ndarray) -> dict:
    """HR@10 and MRR@20 over all pairs (MISS is a miss), mean 0-based rank over covered pairs
    (None when none is covered)."""
    n = int(ranks.size)
    covered = ranks != MISS
    top = ranks[ranks < 20]
    return {
        "hr@10": float(np.mean(ranks < 10)) if n else 0.0,
        "mrr@20": float(np.sum(1.0 / (top + 1.0)) / n) if n else 0.0,
        "mean_rank": float(np.mean(ranks[covered])) if covered.any() else None,
        "n": n,
        "covered": int(covered.sum()),
    }


def booked_item_ranks(
    conversions: pa.Table, vectors: ItemVectors, max_position: int = 10, batch_size: int = 2048
) -> dict:
    """Rank of the booked item among all items by cosine to each item clicked before it.

    A pair is (context item at click position p, booked item) of one conversion: p = 1 for the
    most recent item before the booking, 2 for the one before, and so on; positions beyond
    ``max_position`` are pooled into the last bucket (``position == max_position``). A pair
    whose items lack a vector is a MISS: a miss in HR@10 and MRR@20, left out of ``mean_rank``
    and of ``covered`` (a count of pairs). A context item equal to the booked one (the contract
    excludes it) is skipped.

    Returns:
        ``{"overall": {"hr@10", "mrr@20", "mean_rank", "n", "covered"}, "by_position":
        [{"position", "n", "covered", "hr@10", "mrr@20", "mean_rank"}, ...]}`` with one entry
        per position 1..max_position.
    """
    if max_position < 1 or batch_size < 1:
        raise ValueError(
            f"max_position ({max_position}) and batch_size ({batch_size}) must be >= 1"
        )
    started = time.monotonic()
    vocabulary, booked, (context,) = encode_items(conversions, ["context_items"])
    booked_code = booked[context.parent]
    is_pair = context.code != booked_code
    rows = vector_rows(vocabulary, vectors)
    ranks = cosine_ranks(
        vectors.vectors, rows[context.code[is_pair]], rows[booked_code[is_pair]], batch_size
    )
    position = np.minimum(context.slot[is_pair] + 1, max_position)
    by_position = []
    for p in range(1, max_position + 1):
        metrics = booked_ranks_metrics(ranks[position == p])
        by_position.append({"position": p, **{k: metrics[k] for k in BY_POSITION_KEYS}})
    result = {"overall": booked_ranks_metrics(ranks), "by_position": by_position}
    logger.info(
        "booked-item ranks: %d pairs (%d covered) from %d conversions in %.2f s",
        ranks.size,
        result["overall"]["covered"],
        conversions.num_rows,
        time.monotonic() - started,
    )
    return result
