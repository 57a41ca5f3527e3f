"""The frozen harness's evaluator: reads only a published ``item_vectors.parquet``, the
pipeline's input and the held-out events, and trains its own fixed baselines.

Cases: consecutive distinct items (a -> b, a != b) of the held-out sessions (the source's own, or
a 30-minute gap), repeats collapsed, no dwell or length rule; at most ``MAX_CASES`` sampled with a
fixed seed. Every method ranks every item of the published table except ``a`` by its score to
``a``; ties count as their expected rank under a random tie-break; an item without a vector (or
a target outside the table) is a miss. Baselines, fixed: popularity (event count), item
co-occurrence (window 5, either direction, ties and empty rows backed off to popularity) and
PPMI-SVD (window 5, context smoothing 0.75, 64 dimensions, U * sqrt(S)). Slices: all cases,
covered (a and b in the table) and novel (a and b both seen in training, never within 5
positions of each other in any training session).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from bench.frozen_logs import LogSpec, seconds, session_keys

WINDOW = 5
SVD_DIM = 64
CDS = 0.75
MAX_CASES = 50_000
CASE_SEED = 0
MISS = np.inf
BATCH = 1024


def item_rows(frame: pd.DataFrame, spec: LogSpec) -> pd.DataFrame:
    if spec.item_filter is None:
        return frame
    column, values = spec.item_filter
    return frame[frame[column].isin(values)]


def sequences(frame: pd.DataFrame, spec: LogSpec) -> list[np.ndarray]:
    """Each session's item ids (strings) in time order, consecutive repeats collapsed."""
    frame = item_rows(frame, spec)
    frame = frame[frame[spec.item].notna()]
    if frame.empty:
        return []
    keys = session_keys(frame, spec)
    ts = seconds(frame, spec)
    tie = frame[spec.order].to_numpy() if spec.order else np.zeros(len(frame))
    order = np.lexsort((np.arange(len(frame)), tie, ts, keys))
    items = frame[spec.item].astype(str).to_numpy()[order]
    k = keys[order]
    keep = np.ones(len(items), dtype=bool)
    keep[1:] = (k[1:] != k[:-1]) | (items[1:] != items[:-1])
    items, k = items[keep], k[keep]
    bounds = np.flatnonzero(np.diff(k)) + 1
    return np.split(items, bounds)


@dataclass
class Training:
    """The baselines' view of the pipeline's input."""

    ids: np.ndarray  # (n,) item ids seen in training
    index: dict[str, int]
    popularity: np.ndarray  # (n,) event counts
    cooc: sp.csr_matrix  # (n, n) symmetric window-5 counts


def fit_training(frame: pd.DataFrame, spec: LogSpec) -> Training:
    rows = item_rows(frame, spec)
    rows = rows[rows[spec.item].notna()]
    counts = rows[spec.item].astype(str).value_counts()
    ids = np.array(sorted(counts.index))
    index = {item: i for i, item in enumerate(ids)}
    popularity = counts.reindex(ids).to_numpy(dtype=np.float64)
    seqs = sequences(frame, spec)
    codes = np.fromiter((index[x] for s in seqs for x in s), dtype=np.int64)
    session = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    r, c = [], []
    for d in range(1, WINDOW + 1):
        keep = (session[:-d] == session[d:]) & (codes[:-d] != codes[d:])
        r += [codes[:-d][keep], codes[d:][keep]]
        c += [codes[d:][keep], codes[:-d][keep]]
    row = np.concatenate(r) if r else np.zeros(0, np.int64)
    col = np.concatenate(c) if c else np.zeros(0, np.int64)
    cooc = sp.coo_matrix((np.ones(row.size), (row, col)), shape=(len(ids), len(ids))).tocsr()
    cooc.sum_duplicates()
    return Training(ids, index, popularity, cooc)


def ppmi_svd(training: Training, seed: int) -> np.ndarray:
    """(n, d) L2-normalised PPMI-SVD vectors (rows of items with no co-occurrence are zero)."""
    counts = training.cooc.tocoo()
    total = counts.sum()
    n = len(training.ids)
    dim = min(SVD_DIM, n - 2)
    if total == 0 or dim < 1:
        return np.zeros((n, 1), np.float32)
    row_sum = np.asarray(training.cooc.sum(axis=1)).ravel()
    ctx = row_sum**CDS
    ctx_p = ctx / ctx.sum()
    pmi = (
        np.log(counts.data / total)
        - np.log(row_sum[counts.row] / total)
        - np.log(ctx_p[counts.col])
    )
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=(n, n))
    v0 = np.random.default_rng(seed).uniform(-1, 1, n)
    u, s, _ = svds(ppmi, k=dim, v0=v0, tol=1e-3)
    vectors = u * np.sqrt(s)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass
class Cases:
    a: np.ndarray  # item ids (str)
    b: np.ndarray
    novel: np.ndarray  # bool


def make_cases(heldout: pd.DataFrame, spec: LogSpec, training: Training) -> Cases:
    pairs = [(s[i], s[i + 1]) for s in sequences(heldout, spec) for i in range(len(s) - 1)]
    if len(pairs) > MAX_CASES:
        keep = np.sort(np.random.default_rng(CASE_SEED).choice(len(pairs), MAX_CASES, False))
        pairs = [pairs[i] for i in keep]
    a = np.array([p[0] for p in pairs], dtype=object)
    b = np.array([p[1] for p in pairs], dtype=object)
    ia = np.array([training.index.get(x, -1) for x in a], dtype=np.int64)
    ib = np.array([training.index.get(x, -1) for x in b], dtype=np.int64)
    seen = (ia >= 0) & (ib >= 0)
    together = np.zeros(len(pairs), dtype=bool)
    if seen.any():
        together[seen] = np.asarray(training.cooc[ia[seen], ib[seen]]).ravel() > 0
    return Cases(a, b, seen & ~together)


def expected_ranks(scores: np.ndarray, target: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """0-based expected rank of column ``target`` in each row of ``scores`` (ties broken at
    random), column ``exclude`` (-1: none) left out; a target scoring -inf is a miss."""
    rows = np.arange(scores.shape[0])
    has_ex = exclude >= 0
    scores[rows[has_ex], exclude[has_ex]] = np.nan  # nan compares false: never counted
    t = scores[rows, target][:, None]
    greater = (scores > t).sum(axis=1)
    equal = (scores == t).sum(axis=1) - 1
    ranks = greater + 0.5 * equal
    return np.where(np.isneginf(t[:, 0]), MISS, ranks)


def vector_ranks(table_ids: np.ndarray, vectors: np.ndarray, cases: Cases) -> np.ndarray:
    """Ranks by cosine over the published table (rows L2-normalised)."""
    table_index = {x: i for i, x in enumerate(table_ids)}
    ranks = np.full(len(cases.a), MISS)
    qa = np.array([table_index.get(x, -1) for x in cases.a], dtype=np.int64)
    tb = np.array([table_index.get(x, -1) for x in cases.b], dtype=np.int64)
    ok = np.flatnonzero((qa >= 0) & (tb >= 0))
    for lo in range(0, ok.size, BATCH):
        sel = ok[lo : lo + BATCH]
        scores = (vectors[qa[sel]] @ vectors.T).astype(np.float64)
        ranks[sel] = expected_ranks(scores, tb[sel], qa[sel])
    return ranks


def count_ranks(table_ids: np.ndarray, training: Training, cases: Cases, cooc: bool) -> np.ndarray:
    """Popularity (``cooc`` False) or co-occurrence backed off to popularity, over the table."""
    table_index = {x: i for i, x in enumerate(table_ids)}
    train_col = np.array([training.index.get(x, -1) for x in table_ids], dtype=np.int64)
    pop = np.where(train_col >= 0, training.popularity[np.maximum(train_col, 0)], 0.0)
    scale = pop.max() + 1.0
    tb = np.array([table_index.get(x, -1) for x in cases.b], dtype=np.int64)
    ex = np.array([table_index.get(x, -1) for x in cases.a], dtype=np.int64)
    qa = np.array([training.index.get(x, -1) for x in cases.a], dtype=np.int64)
    ranks = np.full(len(cases.a), MISS)
    ok = np.flatnonzero(tb >= 0)
    sub = training.cooc[:, np.maximum(train_col, 0)].tocsr() if cooc else None
    for lo in range(0, ok.size, BATCH):
        sel = ok[lo : lo + BATCH]
        scores = np.repeat(pop[None, :], sel.size, axis=0)
        if cooc:
            dense = sub[np.maximum(qa[sel], 0)].toarray()
            dense[:, train_col < 0] = 0.0
            dense[qa[sel] < 0] = 0.0
            scores += dense * scale
        ranks[sel] = expected_ranks(scores, tb[sel], ex[sel])
    return ranks


def metrics(ranks: np.ndarray) -> dict:
    if ranks.size == 0:
        return {"hr@10": 0.0, "hr@20": 0.0, "mrr@20": 0.0, "ndcg@10": 0.0, "n": 0}
    finite = np.where(np.isfinite(ranks), ranks, 1e9)
    return {
        "hr@10": float(np.mean(finite < 10)),
        "hr@20": float(np.mean(finite < 20)),
        "mrr@20": float(np.mean(np.where(finite < 20, 1.0 / (finite + 1.0), 0.0))),
        "ndcg@10": float(np.mean(np.where(finite < 10, 1.0 / np.log2(finite + 2.0), 0.0))),
        "n": int(ranks.size),
    }


def sliced(ranks: np.ndarray, covered: np.ndarray, novel: np.ndarray) -> dict:
    return {"all": metrics(ranks), "covered": metrics(ranks[covered]),
            "novel": metrics(ranks[novel])}  # fmt: skip


def evaluate(
    table_ids: np.ndarray | None,
    vectors: np.ndarray | None,
    training: Training,
    cases: Cases,
    seed: int,
    shuffled_control: bool = True,
) -> dict:
    """Every method on the same cases and candidate set. ``table_ids`` None: the run did not
    publish; the vectors score 0 and the baselines rank every training item."""
    published = table_ids is not None
    candidates = table_ids if published else training.ids
    table_index = {x: i for i, x in enumerate(candidates)}
    covered = np.array([x in table_index for x in cases.a]) & np.array(
        [x in table_index for x in cases.b]
    )
    if not published:
        covered[:] = False
    out: dict = {"coverage": float(covered.mean()) if covered.size else 0.0}
    miss = np.full(len(cases.a), MISS)
    out["published"] = sliced(
        vector_ranks(candidates, vectors, cases) if published else miss, covered, cases.novel
    )
    out["popularity"] = sliced(count_ranks(candidates, training, cases, False), covered,
                               cases.novel)  # fmt: skip
    out["cooccurrence"] = sliced(count_ranks(candidates, training, cases, True), covered,
                                 cases.novel)  # fmt: skip
    svd = ppmi_svd(training, seed)
    has_row = np.linalg.norm(svd, axis=1) > 0
    svd_index = {x: i for i, x in enumerate(training.ids) if has_row[i]}
    aligned = np.full((len(candidates), svd.shape[1]), -np.inf, dtype=np.float32)
    rows = np.array([svd_index.get(x, -1) for x in candidates], dtype=np.int64)
    aligned[rows >= 0] = svd[rows[rows >= 0]]
    out["ppmi_svd"] = sliced(
        _svd_ranks(candidates, aligned, rows >= 0, svd, svd_index, cases), covered, cases.novel
    )
    if published and shuffled_control:
        perm = np.random.default_rng(seed).permutation(len(candidates))
        out["shuffled_control"] = sliced(
            vector_ranks(candidates[perm], vectors, cases), covered, cases.novel
        )
    return out


def _svd_ranks(candidates, aligned, has_row, svd, svd_index, cases) -> np.ndarray:
    """PPMI-SVD ranks over the candidates: candidates without an SVD row score -inf."""
    table_index = {x: i for i, x in enumerate(candidates)}
    qa = np.array([svd_index.get(x, -1) for x in cases.a], dtype=np.int64)
    tb = np.array([table_index.get(x, -1) for x in cases.b], dtype=np.int64)
    ex = np.array([table_index.get(x, -1) for x in cases.a], dtype=np.int64)
    ranks = np.full(len(cases.a), MISS)
    safe = np.where(has_row[:, None], aligned, 0.0)
    ok = np.flatnonzero((qa >= 0) & (tb >= 0))
    for lo in range(0, ok.size, BATCH):
        sel = ok[lo : lo + BATCH]
        scores = (svd[qa[sel]] @ safe.T).astype(np.float64)
        scores[:, ~has_row] = -np.inf
        ranks[sel] = expected_ranks(scores, tb[sel], ex[sel])
    return ranks
