"""Cold start: vectors for items too rare to train, from similar trained items (Airbnb KDD'18).

Input: the trained ``ItemVectors`` and the item table (CONTRACTS §1b: ``item_id``, ``market``
and attributes, e.g. ``price`` and ``type``; trivago derives it from impressions). Output: a
vector for every item of the table without one: the normalised mean of the ``k`` most similar
trained items of its market by metadata (first the most matching text attributes, then the
closest numeric ones on a log scale, ties by id), and the share of items covered. An item whose
market has no trained item with metadata gets none.

``measure_cold_start`` checks that this works rather than assuming it: it hides a sample of
trained items, cold-starts them from the others, and reports the cosine to their trained vectors
and the overlap of their 10 nearest neighbours, next to a baseline that averages ``k`` random
trained items of the same market.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from embedding.vectors.item_vectors import ItemVectors, normalize_rows

logger = logging.getLogger(__name__)

KEY_COLUMNS = ("item_id", "market", "dt")
COUNT_COLUMNS = ("n_shown", "n_events")  # observations, not attributes


@dataclass(frozen=True)
class ItemMeta:
    """The item table as arrays: one row per item, its market, text and numeric attributes."""

    ids: list[str]
    markets: list[str | None]
    text: np.ndarray  # (n, n_text) object
    numeric: np.ndarray  # (n, n_numeric) float64, log1p of the value, NaN when missing

    def index(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.ids)}


def item_meta(items: pa.Table) -> ItemMeta:
    """The latest row of each item (by ``dt`` when present) and its attributes."""
    if "dt" in items.column_names:
        items = items.sort_by([("dt", "ascending")])
    rows = {row["item_id"]: row for row in items.to_pylist() if row["item_id"] is not None}
    ids = sorted(rows)
    names = [c for c in items.column_names if c not in KEY_COLUMNS and c not in COUNT_COLUMNS]
    numeric = [c for c in names if pa.types.is_floating(items.schema.field(c).type)
               or pa.types.is_integer(items.schema.field(c).type)]  # fmt: skip
    text = [c for c in names if c not in numeric]
    values = np.array(
        [[rows[i][c] if rows[i][c] is not None else np.nan for c in numeric] for i in ids],
        dtype=np.float64,
    ).reshape(len(ids), len(numeric))
    with np.errstate(invalid="ignore"):
        logged = np.sign(values) * np.log1p(np.abs(values))
    return ItemMeta(
        ids=ids,
        markets=[rows[i].get("market") for i in ids],
        text=np.array([[rows[i][c] for c in text] for i in ids], dtype=object).reshape(
            len(ids), len(text)
        ),
        numeric=logged,
    )


def _similar_rows(meta: ItemMeta, query: int, pool: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows of ``pool`` closest to ``query``: most equal text attributes, then the
    smallest mean absolute log difference of numeric ones (missing: worst), then by id."""
    matches = (meta.text[pool] == meta.text[query]).sum(axis=1) if meta.text.shape[1] else 0
    if meta.numeric.shape[1]:
        diff = np.abs(meta.numeric[pool] - meta.numeric[query])
        distance = np.where(np.isnan(diff), np.inf, diff).mean(axis=1)
    else:
        distance = np.zeros(pool.size)
    order = np.lexsort((pool, distance, -np.asarray(matches) * np.ones(pool.size)))
    return pool[order[:k]]


def cold_start_vectors(
    trained: ItemVectors, meta: ItemMeta, k: int = 3, only: set[str] | None = None
) -> dict[str, np.ndarray]:
    """A unit vector for each item of ``meta`` (or of ``only``) that ``trained`` lacks, from
    its ``k`` most similar trained items of the same market; items with no such neighbour are
    left out."""
    trained_index = trained.index()
    by_market: dict[str | None, list[int]] = defaultdict(list)
    for row, item in enumerate(meta.ids):
        if item in trained_index:
            by_market[meta.markets[row]].append(row)
    pools = {market: np.array(rows, dtype=np.int64) for market, rows in by_market.items()}
    out: dict[str, np.ndarray] = {}
    for row, item in enumerate(meta.ids):
        pool = pools.get(meta.markets[row])
        if only is not None and item not in only:
            continue
        if item in trained_index or pool is None or meta.markets[row] is None:
            continue
        similar = _similar_rows(meta, row, pool, k)
        mean = trained.vectors[[trained_index[meta.ids[r]] for r in similar]].mean(axis=0)
        out[item] = normalize_rows(mean[None, :])[0]
    return out


def with_cold_start(
    trained: ItemVectors, cold: dict[str, np.ndarray]
) -> tuple[ItemVectors, set[str]]:
    """The trained vectors plus the cold-start ones (count 0), and the set of cold ids."""
    if not cold:
        return trained, set()
    ids = sorted(cold)
    vectors = np.vstack([trained.vectors, np.stack([cold[i] for i in ids])]).astype(np.float32)
    counts = np.concatenate([trained.counts, np.zeros(len(ids), np.int64)])
    return ItemVectors(trained.ids + ids, vectors, counts), set(ids)


def _top_k(table: np.ndarray, queries: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ table.T
    scores[np.arange(len(queries)), exclude] = -np.inf
    return np.argpartition(-scores, k, axis=1)[:, :k]


def measure_cold_start(
    trained: ItemVectors, meta: ItemMeta, k: int = 3, n_hidden: int = 500, seed: int = 0
) -> dict:
    """Hide up to ``n_hidden`` trained items with metadata, cold-start them from the rest, and
    compare with their trained vectors: mean cosine and overlap of the 10 nearest trained
    items, for the metadata method and for a mean of ``k`` random same-market trained items."""
    trained_index = trained.index()
    meta_index = meta.index()
    known = [i for i in trained.ids if i in meta_index and meta.markets[meta_index[i]] is not None]
    rng = np.random.default_rng(seed)
    hidden = sorted(rng.choice(known, size=min(n_hidden, len(known)), replace=False).tolist())
    if len(hidden) < 2:
        return {"n_hidden": len(hidden), "metadata": None, "random_same_market": None}
    hidden_set = set(hidden)
    keep = [i for i in trained.ids if i not in hidden_set]
    rest = ItemVectors(keep, trained.vectors[[trained_index[i] for i in keep]],
                       trained.counts[[trained_index[i] for i in keep]])  # fmt: skip
    by_market: dict[str | None, list[str]] = defaultdict(list)
    for item in keep:
        if item in meta_index:
            by_market[meta.markets[meta_index[item]]].append(item)
    predicted = cold_start_vectors(rest, meta, k, only=hidden_set)
    random_vectors = {}
    for item in hidden:
        pool = by_market.get(meta.markets[meta_index[item]], [])
        if pool:
            pick = rng.choice(pool, size=min(k, len(pool)), replace=False)
            mean = rest.vectors[[rest.index()[p] for p in pick]].mean(axis=0)
            random_vectors[item] = normalize_rows(mean[None, :])[0]
    truth_rows = np.array([trained_index[i] for i in hidden])
    return {
        "n_hidden": len(hidden),
        "k": k,
        "metadata": _agreement(trained, truth_rows, hidden, predicted),
        "random_same_market": _agreement(trained, truth_rows, hidden, random_vectors),
    }


def _agreement(
    trained: ItemVectors, truth_rows: np.ndarray, hidden: list[str], guess: dict[str, np.ndarray]
) -> dict:
    """Cosine of each guessed vector to the trained one and the overlap of their 10 nearest
    trained items (the hidden item itself excluded); hidden items with no guess count as 0."""
    covered = np.array([i in guess for i in hidden])
    if not covered.any():
        return {"cosine": 0.0, "overlap@10": 0.0, "coverage": 0.0}
    rows = truth_rows[covered]
    guessed = np.stack([guess[i] for i, c in zip(hidden, covered, strict=True) if c])
    cosine = np.zeros(len(hidden))
    cosine[covered] = (guessed * trained.vectors[rows]).sum(axis=1)
    k = min(10, len(trained.ids) - 2)
    true_top = _top_k(trained.vectors, trained.vectors[rows], rows, k)
    guess_top = _top_k(trained.vectors, guessed, rows, k)
    overlap = np.zeros(len(hidden))
    overlap[covered] = [
        np.intersect1d(a, b).size / k for a, b in zip(true_top, guess_top, strict=True)
    ]
    return {
        "cosine": float(cosine.mean()),
        "overlap@10": float(overlap.mean()),
        "coverage": float(covered.mean()),
    }
