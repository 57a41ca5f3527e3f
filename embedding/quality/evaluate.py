"""Offline evaluation: next-item ranking on held-out sessions, against count-based baselines.

Input: train and held-out test sessions, the test sessions' conversions, candidate vectors
(skip-gram, fine-tuned). Output: a metrics dict and the quality-gate verdict. Next-item HR@10,
HR@20, MRR@20, NDCG@10 on all cases and on the covered slice, for popularity, item co-occurrence,
PPMI-SVD and every candidate; the booked-item rank by click position (Airbnb) and, when the source
recorded the items on screen, the impression re-rank (trivago) from ``embedding.quality.rerank``.

A case is a consecutive pair (a -> b) in a test session's ``item_ids``. Every method ranks all
candidate items for query ``a`` (``a`` itself excluded) and we record where ``b`` lands. A case
whose items have no vector counts as a miss in the "all" figures; "covered" figures use only
cases where both items have vectors, so coverage and quality can be read apart.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise

import numpy as np
import pyarrow as pa

from embedding.core.config import EvaluateConfig, GateConfig
from embedding.quality.baselines import cooccurrence_counts, cooccurrence_ranks, ppmi_svd_vectors
from embedding.quality.rerank import booked_item_ranks, impression_rerank
from embedding.vectors.item_vectors import ItemVectors

logger = logging.getLogger(__name__)

MISS = np.iinfo(np.int64).max


def next_item_cases(item_lists: Iterable[list[str]]) -> list[tuple[str, str]]:
    return [(a, b) for items in item_lists for a, b in pairwise(items) if a != b]


def _sample_rows(n: int, max_cases: int, seed: int) -> np.ndarray:
    if n <= max_cases:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_cases, replace=False))


def sample_cases(cases: list[tuple[str, str]], max_cases: int, seed: int) -> list[tuple[str, str]]:
    return [cases[i] for i in _sample_rows(len(cases), max_cases, seed)]


def case_sessions(item_lists: list[list[str]]) -> np.ndarray:
    """The session (row of ``item_lists``) of each case of ``next_item_cases``, in order."""
    return np.array(
        [s for s, items in enumerate(item_lists) for a, b in pairwise(items) if a != b],
        dtype=np.int64,
    )


def per_case(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each case's contribution to ``metric`` (hr@K: hit or not; mrr@K: reciprocal rank)."""
    name, k = metric.split("@")
    capped = np.minimum(ranks, MISS - 2).astype(np.float64)
    inside = ranks < int(k)
    if name == "hr":
        return inside.astype(np.float64)
    return np.where(inside, 1.0 / (capped + 1.0), 0.0)


def bootstrap_lift(
    candidate: np.ndarray,
    popularity: np.ndarray,
    sessions: np.ndarray,
    gate: GateConfig,
    seed: int,
) -> dict:
    """Paired bootstrap over test sessions of ``mean(candidate) - min_lift x mean(popularity)``
    (per-case figures of the gate metric): its one-sided lower bound at ``gate.confidence``.
    Sessions, not cases, are resampled: the cases of one session are not independent."""
    _, session = np.unique(sessions, return_inverse=True)
    n = int(session.max()) + 1 if session.size else 0
    point = (
        float(candidate.mean() - gate.min_lift_over_popularity * popularity.mean()) if n else 0.0
    )
    if n == 0:
        return {"lower": None, "diff": point, "n_sessions": 0}
    c = np.bincount(session, weights=candidate, minlength=n)
    p = np.bincount(session, weights=popularity, minlength=n)
    k = np.bincount(session, minlength=n).astype(np.float64)
    rng = np.random.default_rng(seed)
    diffs = []
    for lo in range(0, gate.bootstrap_resamples, 100):
        idx = rng.integers(0, n, size=(min(100, gate.bootstrap_resamples - lo), n))
        diffs.append(
            (c[idx].sum(1) - gate.min_lift_over_popularity * p[idx].sum(1)) / k[idx].sum(1)
        )
    diffs = np.concatenate(diffs)
    return {
        "diff": point,
        "lower": float(np.quantile(diffs, 1 - gate.confidence)),
        "upper": float(np.quantile(diffs, gate.confidence)),
        "confidence": gate.confidence,
        "resamples": gate.bootstrap_resamples,
        "n_sessions": n,
        "n_cases": int(candidate.size),
        "method": "paired bootstrap over test sessions",
    }


def baseline_ratios(result: dict, names: Iterable[str]) -> dict:
    """Each candidate's figure over each count baseline's (None when the baseline is 0)."""
    out: dict = {}
    for name in names:
        out[name] = {
            base: {
                m: (result[name][m] / result[base][m] if result[base][m] > 0 else None)
                for m in ("hr@10", "mrr@20")
            }
            for base in ("popularity", "cooccurrence", "ppmi_svd")
            if base in result
        }
    return out


def embedding_ranks(
    vectors: ItemVectors, cases: list[tuple[str, str]], batch_size: int = 2048
) -> np.ndarray:
    """0-based rank of each case's target among all items by cosine to the query (MISS if
    either item has no vector)."""
    index = vectors.index()
    ranks = np.full(len(cases), MISS, dtype=np.int64)
    rows = [(i, index[a], index[b]) for i, (a, b) in enumerate(cases) if a in index and b in index]
    if not rows:
        return ranks
    case_idx, query, target = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))
    table = vectors.vectors
    for start in range(0, len(case_idx), batch_size):
        q = query[start : start + batch_size]
        t = target[start : start + batch_size]
        scores = table[q] @ table.T  # (c, N)
        scores[np.arange(q.size), q] = -np.inf
        target_scores = scores[np.arange(q.size), t][:, None]  # (c, 1)
        ranks[case_idx[start : start + batch_size]] = (scores > target_scores).sum(axis=1)
    return ranks


def popularity_ranks(train_counts: Counter, cases: list[tuple[str, str]]) -> np.ndarray:
    """Rank of the target in the global popularity order (ties by id), the query excluded."""
    order = sorted(train_counts, key=lambda item: (-train_counts[item], item))
    position = {item: pos for pos, item in enumerate(order)}
    ranks = np.full(len(cases), MISS, dtype=np.int64)
    for i, (a, b) in enumerate(cases):
        if b in position:
            pos_b = position[b]
            ranks[i] = pos_b - (1 if position.get(a, MISS) < pos_b else 0)
    return ranks


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """HR@10, HR@20, MRR@20 and NDCG@10 (one relevant item: 1/log2(rank + 2)) of 0-based ranks."""
    if ranks.size == 0:
        return {"hr@10": 0.0, "hr@20": 0.0, "mrr@20": 0.0, "ndcg@10": 0.0, "n": 0}
    capped = np.minimum(ranks, MISS - 2).astype(np.float64)
    reciprocal = np.where(ranks < 20, 1.0 / (capped + 1.0), 0.0)
    gain = np.where(ranks < 10, 1.0 / np.log2(capped + 2.0), 0.0)
    return {
        "hr@10": float(np.mean(ranks < 10)),
        "hr@20": float(np.mean(ranks < 20)),
        "mrr@20": float(np.mean(reciprocal)),
        "ndcg@10": float(np.mean(gain)),
        "n": int(ranks.size),
    }


def baseline_ranks(
    train_lists: list[list[str]],
    train_counts: Counter,
    cases: list[tuple[str, str]],
    cfg: EvaluateConfig,
    svd_dim: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, ItemVectors]]:
    """Ranks of the baselines an analyst would try first, on the same cases: popularity, item
    co-occurrence (backed off to popularity) and, when enabled, PPMI-SVD vectors."""
    ranks = {"popularity": popularity_ranks(train_counts, cases)}
    vectors: dict[str, ItemVectors] = {}
    ids, counts = cooccurrence_counts(train_lists, cfg.cooccurrence_window)
    if len(ids) < 2:
        return ranks, vectors
    ranks["cooccurrence"] = cooccurrence_ranks(ids, counts, train_counts, cases)
    if cfg.ppmi_svd:
        item_counts = np.array([train_counts[i] for i in ids], dtype=np.int64)
        vectors["ppmi_svd"] = ppmi_svd_vectors(
            ids, counts, svd_dim, seed=seed, item_counts=item_counts
        )
        ranks["ppmi_svd"] = embedding_ranks(vectors["ppmi_svd"], cases, cfg.batch_size)
    return ranks, vectors


def evaluate_candidates(
    candidates: dict[str, ItemVectors],
    train_sessions: pa.Table,
    test_sessions: pa.Table,
    cfg: EvaluateConfig,
    seed: int,
    test_conversions: pa.Table | None = None,
    svd_dim: int = 64,
    gate: GateConfig | None = None,
) -> dict:
    """Metrics of every candidate and of the baselines on the same cases: next-item ranking,
    its ratios to the count baselines (``vs_baselines``), with ``gate`` each candidate's lift
    over popularity with a bootstrap bound (``lift_ci``), and on the test sessions' bookings
    the booked-item rank by click position and, when the source recorded what was on screen,
    the impression re-rank."""
    train_lists = train_sessions.column("item_ids").to_pylist()
    train_counts = Counter(item for items in train_lists for item in items)
    test_lists = test_sessions.column("item_ids").to_pylist()
    all_cases = next_item_cases(test_lists)
    kept = _sample_rows(len(all_cases), cfg.max_cases, seed)
    cases = [all_cases[i] for i in kept]
    sessions = case_sessions(test_lists)[kept]
    result: dict = {"n_cases": len(cases), "n_cases_total": len(all_cases)}
    reference = next(iter(candidates.values()))
    covered = embedding_ranks(reference, cases, cfg.batch_size) != MISS if cases else np.zeros(0)
    covered = np.asarray(covered, dtype=bool)
    result["coverage"] = float(covered.mean()) if cases else 0.0
    methods, baseline_vectors = baseline_ranks(train_lists, train_counts, cases, cfg, svd_dim, seed)
    result["baselines"] = list(methods)
    for name, vectors in candidates.items():
        methods[name] = embedding_ranks(vectors, cases, cfg.batch_size)
    for name, ranks in methods.items():
        result[name] = {**ranking_metrics(ranks), "covered": ranking_metrics(ranks[covered])}
        logger.info(
            "eval %-12s hr@10 %.4f mrr@20 %.4f ndcg@10 %.4f (covered: hr@10 %.4f) on %d cases",
            name,
            result[name]["hr@10"],
            result[name]["mrr@20"],
            result[name]["ndcg@10"],
            result[name]["covered"]["hr@10"],
            len(cases),
        )
    result["vs_baselines"] = baseline_ratios(result, candidates)
    if gate is not None:
        result["lift_ci"] = {
            name: bootstrap_lift(per_case(methods[name], gate.metric),
                                 per_case(methods["popularity"], gate.metric), sessions, gate, seed)
            for name in candidates
        }  # fmt: skip
    if test_conversions is not None and test_conversions.num_rows:
        scored = {**baseline_vectors, **candidates}
        result["booked_item"] = {
            name: booked_item_ranks(test_conversions, vectors, cfg.booked_max_position)
            for name, vectors in scored.items()
        }
        shown = test_conversions.column("shown_items")
        if shown.null_count < len(shown):
            result["impression_rerank"] = impression_rerank(test_conversions, scored, train_counts)
    return result


def select_on_validation(
    candidates: dict[str, ItemVectors],
    val_sessions: pa.Table,
    cfg: EvaluateConfig,
    metric: str,
    seed: int,
) -> dict:
    """Pick the vectors to publish by ``metric`` on the validation sessions' next-item cases
    (uncovered cases count as misses); ties go to the earlier candidate (the base). Without
    validation cases the last candidate is kept as configured."""
    cases = sample_cases(next_item_cases(val_sessions.column("item_ids").to_pylist()),
                         cfg.max_cases, seed)  # fmt: skip
    names = list(candidates)
    scores = {
        name: ranking_metrics(embedding_ranks(vectors, cases, cfg.batch_size))
        for name, vectors in candidates.items()
    }
    if not cases:
        chosen, why = names[-1], "no validation cases: kept the configured candidate"
    else:
        chosen = max(names, key=lambda n: (scores[n][metric], -names.index(n)))
        why = f"highest validation {metric}"
    logger.info(
        "selection on %d validation cases by %s: %s -> %s",
        len(cases),
        metric,
        ", ".join(f"{n} {scores[n][metric]:.4f}" for n in names),
        chosen,
    )
    return {"metric": metric, "n_cases": len(cases), "scores": scores, "chosen": chosen,
            "reason": why}  # fmt: skip


def score_previous(
    previous: ItemVectors,
    version: str,
    candidate: ItemVectors,
    test_sessions: pa.Table,
    cfg: EvaluateConfig,
    seed: int,
) -> dict:
    """The previous version re-scored on this run's cases (the same sample), and the stability
    of each item's neighbours between it and the candidate."""
    cases = sample_cases(next_item_cases(test_sessions.column("item_ids").to_pylist()),
                         cfg.max_cases, seed)  # fmt: skip
    return {
        "version": version,
        **ranking_metrics(embedding_ranks(previous, cases, cfg.batch_size)),
        "stability": neighbour_stability(candidate, previous, seed=seed),
    }


def _top_k(vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    scores = vectors[rows] @ vectors.T
    scores[np.arange(rows.size), rows] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.sort(top, axis=1)


def neighbour_stability(
    current: ItemVectors, previous: ItemVectors, k: int = 10, max_items: int = 2000, seed: int = 0
) -> dict:
    """Mean share of an item's ``k`` nearest neighbours (among the items both versions have)
    that it keeps from one version to the next, over up to ``max_items`` sampled items: near 1
    when a daily retrain keeps the space, near 0 when it reshuffles everything."""
    common = sorted(set(current.ids) & set(previous.ids))
    if len(common) <= k:
        return {f"overlap@{k}": None, "n_common": len(common), "n_items": 0}
    cur_index, prev_index = current.index(), previous.index()
    cur = current.vectors[[cur_index[i] for i in common]]
    prev = previous.vectors[[prev_index[i] for i in common]]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(common), size=min(max_items, len(common)), replace=False))
    overlap = [
        np.intersect1d(a, b, assume_unique=True).size / k
        for a, b in zip(_top_k(cur, rows, k), _top_k(prev, rows, k), strict=True)
    ]
    return {f"overlap@{k}": float(np.mean(overlap)), "n_common": len(common), "n_items": rows.size}
