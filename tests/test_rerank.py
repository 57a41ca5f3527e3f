"""Tests for booking-time evaluation (impression re-rank, booked-item ranks) on hand-made
conversions and 2-D unit vectors whose answers can be worked out on paper."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from embedding.quality.rerank import MISS, booked_item_ranks, impression_rerank
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

CONVERSIONS_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("position", pa.int64()),
        ("booked_item", pa.string()),
        ("context_items", pa.list_(pa.string())),
        ("shown_items", pa.list_(pa.string())),
        ("market", pa.string()),
        ("ts", pa.int64()),
        ("dt", pa.string()),
    ]
)
POPULARITY = {"a": 5, "b": 9, "c": 5, "d": 1}  # "e", "x", "y" unknown: 0


def conversions(*rows: tuple[str, list[str], list[str] | None]) -> pa.Table:
    """One conversion per (booked_item, context_items most recent first, shown_items)."""
    return pa.Table.from_pylist(
        [
            {
                "session_id": f"s{i}",
                "position": 3,
                "booked_item": booked,
                "context_items": context,
                "shown_items": shown,
                "market": "m1",
                "ts": 1_700_000_000 + i,
                "dt": "2026-01-01",
            }
            for i, (booked, context, shown) in enumerate(rows)
        ],
        schema=CONVERSIONS_SCHEMA,
    )


def five_items() -> ItemVectors:
    """a and e identical, b 10° from a, c orthogonal to a, d opposite to a (unit rows, 2-D)."""
    angle = math.radians(10)
    vectors = np.array(
        [[1.0, 0.0], [math.cos(angle), math.sin(angle)], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]],
        dtype=np.float32,
    )
    return ItemVectors(["a", "b", "c", "d", "e"], vectors, np.arange(5, 0, -1, dtype=np.int64))


def four_items() -> ItemVectors:
    """The same without e, so that no item has a twin."""
    five = five_items()
    return ItemVectors(five.ids[:4], five.vectors[:4], five.counts[:4])


def orders(context: list[str], shown: list[str]) -> dict[str, list[str]]:
    """Each method's order of ``shown``, read back from the booked item's rank when each shown
    item in turn is the one booked (one single-case table each)."""
    ranks: dict[str, dict[str, int]] = {}
    for item in shown:
        result = impression_rerank(
            conversions((item, context, shown)), {"w2v": five_items()}, POPULARITY
        )
        for method, metrics in result["methods"].items():
            ranks.setdefault(method, {})[item] = round(1 / metrics["mrr"])
    return {method: sorted(shown, key=by_item.__getitem__) for method, by_item in ranks.items()}


def test_each_method_orders_a_hand_made_case() -> None:
    # context: c most recent, then a; centroid (0.5, 0.5): b 0.58, a = c = e 0.5, d -0.5, x none
    got = orders(["c", "a"], ["d", "x", "a", "b", "c", "e"])
    assert list(got) == ["onscreen", "popularity", "session", "w2v", "session+w2v"]
    assert got["onscreen"] == ["d", "x", "a", "b", "c", "e"]
    assert got["popularity"] == ["b", "a", "c", "d", "x", "e"]  # a, c tie; x, e unknown: 0
    assert got["session"] == ["c", "a", "d", "x", "b", "e"]  # interacted, most recent first
    assert got["w2v"] == ["b", "a", "c", "e", "d", "x"]  # a, c, e tie at 0.5; x unscored last
    assert got["session+w2v"] == ["c", "a", "b", "e", "d", "x"]


def test_without_usable_context_vector_methods_keep_the_onscreen_order() -> None:
    shown = ["x", "d", "b", "a"]
    for context in ([], ["zz"], ["x"]):  # no earlier item; only items without a vector
        assert orders(context, shown)["w2v"] == shown
    assert orders(["zz"], shown)["session+w2v"] == shown
    # x was interacted with but has no vector: it goes first, the rest stay unscored
    assert orders(["x"], ["d", "x", "b", "a"])["session+w2v"] == ["x", "d", "b", "a"]


def test_unknown_context_items_do_not_count_in_the_mean() -> None:
    # only a has a vector: d -1, c 0, b 0.98, e 1; y has none
    assert orders(["zz", "a"], ["d", "c", "y", "b", "e"])["w2v"] == ["e", "b", "c", "d", "y"]
    # b interacted, then by cosine to b: a 0.98, d -0.98, x unscored
    assert orders(["b"], ["d", "x", "b", "a"])["session+w2v"] == ["b", "a", "d", "x"]


def test_aggregates_and_coverage_on_several_cases() -> None:
    context, shown = ["c", "a"], ["d", "x", "a", "b", "c", "e"]
    table = conversions(
        *((item, context, shown) for item in shown),  # 6 cases, every one scored
        ("b", [], ["a", "b"]),  # no context: nothing scored, rank 2 everywhere but popularity
        ("y", ["a"], ["x", "y"]),  # context has a vector, no shown item has: unscored
    )
    result = impression_rerank(table, {"w2v": five_items()}, POPULARITY)
    assert (result["n_cases"], result["n_no_impressions"], result["n_target_not_shown"]) == (
        8,
        0,
        0,
    )
    six = sum(1 / r for r in range(1, 7))  # each method orders the first six as a permutation
    onscreen = result["methods"]["onscreen"]
    assert onscreen == pytest.approx(
        {"mrr": (six + 1 / 2 + 1 / 2) / 8, "hr@1": 1 / 8, "hr@5": 7 / 8, "n": 8}
    )
    assert result["methods"]["popularity"]["mrr"] == pytest.approx((six + 1 + 1 / 2) / 8)
    assert result["methods"]["w2v"]["coverage"] == pytest.approx(6 / 8)
    assert "coverage" not in result["methods"]["session+w2v"]


def test_counts_null_and_empty_impressions_and_target_not_shown() -> None:
    table = conversions(
        ("a", ["b"], None),
        ("a", ["b"], []),
        ("a", ["b"], ["b", "c"]),
        ("a", [], ["b", "a", "a"]),  # the first occurrence is the target
        ("a", ["b"], None),
    )
    result = impression_rerank(table, {}, {})
    assert (result["n_cases"], result["n_no_impressions"], result["n_target_not_shown"]) == (
        1,
        3,
        1,
    )
    assert result["methods"] == {
        "onscreen": {"mrr": 0.5, "hr@1": 0.0, "hr@5": 1.0, "n": 1},
        "popularity": {"mrr": 0.5, "hr@1": 0.0, "hr@5": 1.0, "n": 1},
        "session": {"mrr": 0.5, "hr@1": 0.0, "hr@5": 1.0, "n": 1},
    }


def test_no_cases_gives_zero_metrics() -> None:
    result = impression_rerank(conversions(("a", ["b"], None)), {"w2v": five_items()}, {})
    assert result["n_cases"] == 0
    assert result["methods"]["w2v"] == {
        "mrr": 0.0,
        "hr@1": 0.0,
        "hr@5": 0.0,
        "n": 0,
        "coverage": 0.0,
    }


def test_candidate_names_must_not_clash_with_methods() -> None:
    with pytest.raises(ValueError, match="session"):
        impression_rerank(conversions(("a", [], ["a"])), {"session": five_items()}, {})


def naive_ranks(table: pa.Table, vectors: ItemVectors, popularity: dict[str, int]) -> dict:
    """Per-case ranks by Python's stable ``sorted``, the definition written out."""
    index = vectors.index()
    ranks: dict[str, list[int]] = {}
    for row in table.to_pylist():
        booked, context, shown = row["booked_item"], row["context_items"], row["shown_items"]
        if not shown or booked not in shown:
            continue
        recency = {item: r for r, item in reversed(list(enumerate(context)))}
        context_vectors = [vectors.vectors[index[c]] for c in context if c in index]
        centroid = (
            np.mean(np.array(context_vectors, dtype=np.float64), axis=0)
            if context_vectors
            else None
        )

        def score(item: str, centroid: np.ndarray | None = centroid) -> tuple[int, float]:
            if centroid is None or item not in index:
                return (0, 0.0)
            return (1, float(vectors.vectors[index[item]] @ centroid))

        def session(item: str, recency: dict[str, int] = recency) -> tuple[int, int]:
            return (1, -recency[item]) if item in recency else (0, 0)

        keys = {
            "onscreen": lambda item: 0,
            "popularity": lambda item: popularity.get(item, 0),
            "session": session,
            "w2v": score,
            "session+w2v": lambda item, s=session, v=score: (*s(item), *v(item)),
        }
        for method, key in keys.items():
            order = sorted(shown, key=key, reverse=True)  # reverse keeps ties in input order
            ranks.setdefault(method, []).append(order.index(booked) + 1)
    return ranks


def test_matches_a_plain_sorted_reference_on_random_cases() -> None:
    rng = random.Random(7)
    items = [f"i{k}" for k in range(40)]
    raw = np.random.default_rng(7).normal(size=(30, 3))
    raw[10:15] = raw[:5]  # identical vectors: exact score ties
    vectors = ItemVectors(items[:30], normalize_rows(raw), np.ones(30, dtype=np.int64))
    popularity = {item: rng.randrange(4) for item in items[:35]}  # many ties; i35.. unknown
    rows = []
    for _ in range(300):
        shown = rng.sample(items, rng.randrange(0, 12)) if rng.random() > 0.1 else None
        pool = [i for i in items if rng.random() < 0.15]
        booked = rng.choice(shown) if shown and rng.random() < 0.7 else rng.choice(items)
        rows.append((booked, rng.sample(pool, len(pool)), shown))
    table = conversions(*rows)
    result = impression_rerank(table, {"w2v": vectors}, popularity)
    expected = naive_ranks(table, vectors, popularity)
    assert result["n_cases"] == len(expected["onscreen"]) > 50
    for method, ranks in expected.items():
        r = np.array(ranks)
        assert result["methods"][method]["mrr"] == pytest.approx(np.mean(1 / r)), method
        assert result["methods"][method]["hr@1"] == pytest.approx(np.mean(r <= 1)), method
        assert result["methods"][method]["hr@5"] == pytest.approx(np.mean(r <= 5)), method


def test_booked_item_ranks_by_position_with_misses_and_pooling() -> None:
    table = conversions(
        ("b", ["a", "c", "zz"], None),  # a->b rank 0 (p1), c->b rank 0 (p2), zz->b MISS (p3)
        ("d", ["c", "a"], ["d"]),  # c->d rank 1: b above, a ties (p1); a->d rank 2 (p2)
        ("zz", ["a"], None),  # a->zz MISS (p1)
    )
    result = booked_item_ranks(table, four_items(), max_position=2)
    p1 = {"position": 1, "n": 3, "covered": 2, "hr@10": 2 / 3, "mrr@20": 1.5 / 3, "mean_rank": 0.5}
    p2 = {
        "position": 2,
        "n": 3,
        "covered": 2,
        "hr@10": 2 / 3,
        "mrr@20": (4 / 3) / 3,
        "mean_rank": 1.0,
    }
    assert result["by_position"] == [pytest.approx(p1), pytest.approx(p2)]  # p3 pooled into p2
    overall = {
        "hr@10": 4 / 6,
        "mrr@20": (1 + 1 + 1 / 2 + 1 / 3) / 6,
        "mean_rank": 0.75,
        "n": 6,
        "covered": 4,
    }
    assert result["overall"] == pytest.approx(overall)

    unpooled = booked_item_ranks(table, four_items(), batch_size=1)
    assert [p["position"] for p in unpooled["by_position"]] == list(range(1, 11))
    assert unpooled["by_position"][2] == {
        "position": 3,
        "n": 1,
        "covered": 0,
        "hr@10": 0.0,
        "mrr@20": 0.0,
        "mean_rank": None,
    }
    assert all(p["n"] == 0 for p in unpooled["by_position"][3:])
    assert unpooled["overall"] == result["overall"]


def test_booked_item_ranks_skip_the_booked_item_in_context_and_check_arguments() -> None:
    result = booked_item_ranks(conversions(("a", ["b", "a"], None)), five_items())
    assert result["overall"]["n"] == 1
    assert result["overall"]["mean_rank"] == 0.0  # from b, e ties with a: ties do not count
    with pytest.raises(ValueError, match="max_position"):
        booked_item_ranks(conversions(("a", ["b"], None)), five_items(), max_position=0)
    assert MISS == np.iinfo(np.int64).max
