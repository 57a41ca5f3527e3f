"""Tests for the count-based baselines (co-occurrence counts and ranks, PPMI-SVD vectors), on
hand-made sessions whose answers can be worked out on paper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from embedding.quality.baselines import (
    MISS,
    cooccurrence_counts,
    cooccurrence_ranks,
    ppmi_matrix,
    ppmi_svd_vectors,
)
from embedding.quality.evaluate import MISS as EVALUATE_MISS

# a b c | b a a c | d : "a a" is a repeat, never a self pair; d co-occurs with nothing
SESSIONS = [["a", "b", "c"], ["b", "a", "a", "c"], ["d"]]


def test_counts_window_1():
    ids, counts = cooccurrence_counts(SESSIONS, window=1)
    assert ids == ["a", "b", "c", "d"]
    assert isinstance(counts, sp.csr_matrix) and counts.dtype == np.float64
    # window 1: a-b (s1), b-c (s1), b-a (s2), a-c (s2); a-a (s2) is not counted
    expected = [[0, 2, 1, 0], [2, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(counts.toarray(), expected)


def test_counts_window_2_and_3():
    ids, counts = cooccurrence_counts(iter(SESSIONS), window=2)  # a one-shot iterator is fine
    assert ids == ["a", "b", "c", "d"]
    # distance 2 adds a-c (s1), b-a and a-c (s2)
    expected = [[0, 3, 3, 0], [3, 0, 1, 0], [3, 1, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(counts.toarray(), expected)
    _, counts3 = cooccurrence_counts(SESSIONS, window=3)  # distance 3 adds b-c (s2)
    np.testing.assert_array_equal(counts3.toarray()[1], [3, 0, 2, 0])


def test_counts_symmetric_without_self_pairs():
    sessions = [["x", "x", "y", "x", "x"], ["y", "y"], ["z", "x"]]
    ids, counts = cooccurrence_counts(sessions, window=4)
    dense = counts.toarray()
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_array_equal(np.diag(dense), [0, 0, 0])
    # x-y: the single y (s1) is within 4 of all four x; z-x once (s3); y-y (s2) is a repeat
    assert ids == ["x", "y", "z"]
    np.testing.assert_array_equal(dense, [[0, 4, 1], [4, 0, 0], [1, 0, 0]])


def test_counts_edge_cases():
    ids, counts = cooccurrence_counts([], window=2)
    assert ids == [] and counts.shape == (0, 0)
    with pytest.raises(ValueError, match="window"):
        cooccurrence_counts(SESSIONS, window=0)


IDS = ["a", "b", "c", "d", "e", "f", "g"]
PAIRS = {("a", "b"): 2, ("a", "c"): 1, ("a", "d"): 1, ("b", "c"): 1, ("b", "f"): 1, ("e", "f"): 5}
POPULARITY = {"a": 10, "b": 1, "c": 2, "d": 5, "e": 2, "f": 2}  # g is absent: popularity 0


def pair_counts() -> sp.csr_matrix:
    dense = np.zeros((len(IDS), len(IDS)))
    for (x, y), n in PAIRS.items():
        dense[IDS.index(x), IDS.index(y)] = dense[IDS.index(y), IDS.index(x)] = n
    return sp.csr_matrix(dense)


def ranks_of(cases: list[tuple[str, str]]) -> list[int]:
    return cooccurrence_ranks(IDS, pair_counts(), POPULARITY, cases).tolist()


def test_ranks_seen_first_then_popularity_then_id():
    # query a: b (2), then d and c (1; d more popular), then unseen e, f (popularity 2; by id), g
    assert ranks_of([("a", x) for x in "bdcefg"]) == [0, 1, 2, 3, 4, 5]
    # query b: a (2), then c and f (1, same popularity; by id), then unseen d, e, g
    assert ranks_of([("b", x) for x in "acfdeg"]) == [0, 1, 2, 3, 4, 5]


def test_ranks_query_never_counts_against_target():
    # query f: e (5), b (1), then unseen a (most popular), d, c, g; f itself takes no place
    assert ranks_of([("f", x) for x in "ebadcg"]) == [0, 1, 2, 3, 4, 5]


def test_ranks_unknown_query_falls_back_to_popularity():
    assert ranks_of([("zz", x) for x in "adcefbg"]) == [0, 1, 2, 3, 4, 5, 6]


def test_ranks_miss():
    ranks = cooccurrence_ranks(
        IDS, pair_counts(), POPULARITY, [("a", "zz"), ("a", "a"), ("zz", "yy")]
    )
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [MISS, MISS, MISS]
    assert MISS == EVALUATE_MISS
    assert cooccurrence_ranks(IDS, pair_counts(), POPULARITY, []).tolist() == []


def test_ranks_match_a_full_sort():
    rng = np.random.default_rng(3)
    items = [f"i{k:02d}" for k in range(30)]
    sessions = [list(rng.choice(items, size=rng.integers(2, 7))) for _ in range(40)]
    ids, counts = cooccurrence_counts(sessions, window=2)
    popularity = {item: int(rng.integers(0, 4)) for item in items[:25]}  # ties; some absent
    cases = [(str(rng.choice(items)), str(rng.choice(items))) for _ in range(300)]
    dense = counts.toarray()

    def full_sort_rank(a: str, b: str) -> int:
        if a == b or b not in ids:
            return MISS
        row = dense[ids.index(a)] if a in ids else np.zeros(len(ids))
        keys = sorted((-row[j], -popularity.get(x, 0), x) for j, x in enumerate(ids) if x != a)
        return keys.index((-row[ids.index(b)], -popularity.get(b, 0), b))

    expected = [full_sort_rank(a, b) for a, b in cases]
    assert cooccurrence_ranks(ids, counts, popularity, cases).tolist() == expected


def test_ppmi_matrix_by_hand():
    # a-b 2, a-c 1, b-c 1: row sums 3, 3, 2 of 8; with cds_alpha 1, PMI = log(n_ij * 8 / (n_i n_j))
    counts = sp.csr_matrix(np.array([[0, 2, 1], [2, 0, 1], [1, 1, 0]], dtype=np.float64))
    pmi = ppmi_matrix(counts, cds_alpha=1.0, shift_k=1.0).toarray()
    ab, ac = math.log(16 / 9), math.log(8 / 6)
    np.testing.assert_allclose(pmi, [[0, ab, ac], [ab, 0, ac], [ac, ac, 0]])
    # shifted by log 2, each PMI above turns negative, so PPMI clips them all
    assert ppmi_matrix(counts, cds_alpha=1.0, shift_k=2.0).nnz == 0


def two_group_sessions() -> list[list[str]]:
    """Items of group A only co-occur with A, B with B; z only ever appears alone."""
    rng = np.random.default_rng(0)
    groups = [[f"a{k}" for k in range(5)], [f"b{k}" for k in range(5)]]
    sessions = [list(rng.permutation(groups[s % 2])[:4]) for s in range(60)]
    return [*sessions, ["z"]]


def test_ppmi_svd_neighbours_stay_in_group():
    ids, counts = cooccurrence_counts(two_group_sessions(), window=2)
    vectors = ppmi_svd_vectors(ids, counts, dim=4, seed=0)
    assert vectors.ids == ids
    assert vectors.vectors.shape == (11, 4) and vectors.vectors.dtype == np.float32
    norms = np.linalg.norm(vectors.vectors, axis=1)
    assert np.all(np.isfinite(vectors.vectors))
    assert np.allclose(norms[:10], 1.0, atol=1e-5) and norms[ids.index("z")] == 0.0
    grouped = [i for i, item in enumerate(ids) if item != "z"]
    table = vectors.vectors[grouped]
    cosine = table @ table.T
    np.fill_diagonal(cosine, -np.inf)
    for row, nearest in enumerate(cosine.argmax(axis=1)):
        assert ids[grouped[row]][0] == ids[grouped[nearest]][0]


def test_ppmi_svd_deterministic_clipped_and_counts():
    ids, counts = cooccurrence_counts(two_group_sessions(), window=2)
    first = ppmi_svd_vectors(ids, counts, dim=3, seed=7)
    second = ppmi_svd_vectors(ids, counts, dim=3, seed=7)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    np.testing.assert_array_equal(first.counts, counts.sum(axis=1).A1.astype(np.int64))
    assert first.counts.dtype == np.int64
    wide = ppmi_svd_vectors(ids, counts, dim=50, item_counts=np.arange(11))
    assert wide.dim == 10  # clipped to n_items - 1
    np.testing.assert_array_equal(wide.counts, np.arange(11))
