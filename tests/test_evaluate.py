"""Tests for offline evaluation (next-item cases, ranks, metrics, gate) and the holdout split,
on hand-made tables whose answers can be worked out on paper."""

from __future__ import annotations

import logging
import math
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedding.core.config import EvaluateConfig, GateConfig
from embedding.quality.evaluate import (
    MISS,
    embedding_ranks,
    neighbour_stability,
    next_item_cases,
    popularity_ranks,
    ranking_metrics,
)
from embedding.quality.gate import check_gate
from embedding.quality.holdout import split_holdout
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def four_items() -> ItemVectors:
    """a and b nearly parallel, c orthogonal to a, d opposite to a (unit rows, 2-D)."""
    angle = math.radians(10)
    vectors = np.array(
        [[1.0, 0.0], [math.cos(angle), math.sin(angle)], [0.0, 1.0], [-1.0, 0.0]],
        dtype=np.float32,
    )
    return ItemVectors(["a", "b", "c", "d"], vectors, np.array([4, 3, 2, 1], dtype=np.int64))


def test_next_item_cases_pairs_consecutive_items_and_skips_self_repeats() -> None:
    sessions = [["a", "a", "b", "c"], ["d"], [], ["e", "f", "e"], ["g", "g"]]
    assert next_item_cases(sessions) == [("a", "b"), ("b", "c"), ("e", "f"), ("f", "e")]


def test_embedding_ranks_by_hand() -> None:
    cases = [
        ("a", "b"),  # b is a's nearest: rank 0
        ("a", "c"),  # b scores above c: rank 1
        ("a", "d"),  # b and c above d: rank 2
        ("c", "b"),  # sin 10° > 0 = c.a = c.d: rank 0
        ("c", "a"),  # only b scores above a (d ties with a, and ties do not count): rank 1
        ("a", "zz"),  # unknown target
        ("zz", "a"),  # unknown query
    ]
    ranks = embedding_ranks(four_items(), cases)
    assert ranks.tolist() == [0, 1, 2, 0, 1, MISS, MISS]


def test_embedding_ranks_do_not_depend_on_batch_size() -> None:
    cases = [("a", "b"), ("a", "c"), ("a", "d"), ("c", "b"), ("c", "a"), ("d", "c"), ("b", "d")]
    whole = embedding_ranks(four_items(), cases)
    for batch_size in (1, 2, 3):
        np.testing.assert_array_equal(embedding_ranks(four_items(), cases, batch_size), whole)


def test_embedding_ranks_with_no_known_case() -> None:
    assert embedding_ranks(four_items(), [("x", "y")]).tolist() == [MISS]
    assert embedding_ranks(four_items(), []).size == 0


def test_popularity_ranks_exclude_the_query_and_break_ties_by_id() -> None:
    counts = Counter({"x": 5, "z": 3, "y": 3, "w": 1})  # order: x, y, z (tie by id), w
    cases = [
        ("w", "x"),  # x first: rank 0
        ("x", "y"),  # y second, but x is the query: rank 0
        ("w", "y"),  # rank 1
        ("w", "z"),  # z third; the query w ranks below it: rank 2
        ("y", "z"),  # y is the query and ranks above z: rank 1
        ("z", "y"),  # z ranks below y: rank 1
        ("x", "w"),  # w last, x excluded: rank 2
        ("q", "x"),  # unknown query: x still rank 0
        ("x", "q"),  # unknown target
    ]
    ranks = popularity_ranks(counts, cases)
    assert ranks.tolist() == [0, 0, 1, 2, 1, 1, 2, 0, MISS]


def test_ranking_metrics_by_hand() -> None:
    ranks = np.array([0, 4, 9, 10, 19, 25, MISS], dtype=np.int64)
    metrics = ranking_metrics(ranks)
    assert metrics["n"] == 7
    assert metrics["hr@10"] == pytest.approx(3 / 7)  # ranks 0, 4, 9
    assert metrics["hr@20"] == pytest.approx(5 / 7)  # ... and 10, 19
    assert metrics["mrr@20"] == pytest.approx((1 + 1 / 5 + 1 / 10 + 1 / 11 + 1 / 20) / 7)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / np.log2(6) + 1 / np.log2(11)) / 7)


def test_ranking_metrics_all_misses_and_no_cases() -> None:
    misses = ranking_metrics(np.array([MISS, MISS], dtype=np.int64))
    assert misses == {"hr@10": 0.0, "hr@20": 0.0, "mrr@20": 0.0, "ndcg@10": 0.0, "n": 2}
    assert ranking_metrics(np.array([], dtype=np.int64)) == {
        "hr@10": 0.0,
        "hr@20": 0.0,
        "mrr@20": 0.0,
        "ndcg@10": 0.0,
        "n": 0,
    }


def gate_metrics(candidate: float, popularity: float, n_cases: int = 10) -> dict:
    return {
        "n_cases": n_cases,
        "popularity": {"hr@10": popularity, "mrr@20": popularity},
        "finetuned": {"hr@10": candidate, "mrr@20": candidate},
    }


@pytest.mark.parametrize(
    ("min_value", "lift", "passed", "required"),
    [
        (0.5, 1.0, True, 0.5),  # exactly at min_value passes
        (0.5625, 1.0, False, 0.5625),  # just above fails
        (0.0, 2.0, True, 0.5),  # exactly twice popularity (0.25 x 2) passes
        (0.0, 2.25, False, 0.5625),  # 0.25 x 2.25 fails
    ],
)
def test_check_gate_at_the_threshold(
    min_value: float, lift: float, passed: bool, required: float
) -> None:
    gate = GateConfig(metric="hr@10", min_value=min_value, min_lift_over_popularity=lift)
    verdict = check_gate(gate_metrics(0.5, 0.25), "finetuned", gate)
    assert verdict.passed is passed
    assert verdict.required == required
    assert verdict.value == 0.5
    assert verdict.metric == "hr@10"
    assert ("finetuned hr@10 0.5000 >=" in verdict.reason) is passed


def test_check_gate_uses_the_configured_metric() -> None:
    metrics = gate_metrics(0.5, 0.25)
    metrics["finetuned"]["mrr@20"] = 0.1
    gate = GateConfig(metric="mrr@20", min_value=0.0, min_lift_over_popularity=1.0)
    verdict = check_gate(metrics, "finetuned", gate)
    assert not verdict.passed
    assert verdict.metric == "mrr@20"


def test_check_gate_fails_without_cases() -> None:
    gate = GateConfig(metric="hr@10", min_value=0.0, min_lift_over_popularity=0.0)
    verdict = check_gate(gate_metrics(0.0, 0.0, n_cases=0), "finetuned", gate)
    assert verdict.passed is False
    assert verdict.reason == "no evaluation cases in the holdout"


# --- split_holdout ---------------------------------------------------------------------------


def sessions_table(rows: list[tuple[str, str, int, list[str]]]) -> pa.Table:
    """(session_id, dt, start minute offset from T0, item_ids) per session."""
    return pa.table(
        {
            "session_id": pa.array([r[0] for r in rows], pa.string()),
            "dt": pa.array([r[1] for r in rows], pa.string()),
            "start_ts": pa.array(
                [T0 + timedelta(minutes=r[2]) for r in rows], pa.timestamp("us", tz="UTC")
            ),
            "item_ids": pa.array([r[3] for r in rows], pa.list_(pa.string())),
        }
    )


def pairs_table(rows: list[tuple[str, str, str]]) -> pa.Table:
    """(session_id, context_item, booked_item) per booking pair."""
    return pa.table(
        {
            "session_id": pa.array([r[0] for r in rows], pa.string()),
            "context_item": pa.array([r[1] for r in rows], pa.string()),
            "booked_item": pa.array([r[2] for r in rows], pa.string()),
            "market": pa.array(["m1"] * len(rows), pa.string()),
        }
    )


SESSIONS = [
    ("s1", "2026-01-01", 10, ["a", "b"]),
    ("s2", "2026-01-01", 20, ["b", "c"]),
    ("s3", "2026-01-02", 1450, ["c", "d"]),
    ("s4", "2026-01-03", 2890, ["a", "d"]),
    ("s5", "2026-01-03", 2900, ["d", "e"]),
]
PAIRS = [("s1", "a", "b"), ("s3", "c", "d"), ("s4", "a", "d"), ("s5", "d", "e"), ("s5", "e", "d")]


def test_last_day_holdout_tests_on_the_last_day() -> None:
    window = split_holdout(
        sessions_table(SESSIONS),
        pairs_table(PAIRS),
        EvaluateConfig(holdout="last_day", val_fraction=0, min_test_cases=0),
    )
    assert sorted(window.test_sessions.column("session_id").to_pylist()) == ["s4", "s5"]
    assert sorted(window.train_sessions.column("session_id").to_pylist()) == ["s1", "s2", "s3"]
    assert sorted(window.train_pairs.column("session_id").to_pylist()) == ["s1", "s3"]
    test_ids = set(window.test_sessions.column("session_id").to_pylist())
    assert not test_ids & set(window.train_pairs.column("session_id").to_pylist())
    assert window.holdout == "last_day (2026-01-03)"


def test_last_fraction_holdout_tests_on_the_latest_sessions() -> None:
    cfg = EvaluateConfig(
        holdout="last_fraction", holdout_fraction=0.4, val_fraction=0
    )  # 2 of 5 sessions
    window = split_holdout(sessions_table(SESSIONS), pairs_table(PAIRS), cfg)
    assert sorted(window.test_sessions.column("session_id").to_pylist()) == ["s4", "s5"]
    assert window.train_sessions.num_rows == 3
    assert sorted(window.train_pairs.column("session_id").to_pylist()) == ["s1", "s3"]
    assert window.holdout.startswith("last_fraction (40%")


def test_last_fraction_breaks_start_ties_by_session_id() -> None:
    tied = [("b", "2026-01-01", 5, ["x", "y"]), ("a", "2026-01-01", 5, ["y", "z"])]
    cfg = EvaluateConfig(holdout="last_fraction", holdout_fraction=0.5, val_fraction=0)
    window = split_holdout(sessions_table(tied), None, cfg)
    assert window.test_sessions.column("session_id").to_pylist() == ["b"]


def test_last_fraction_works_on_a_one_day_window() -> None:
    one_day = [s for s in SESSIONS if s[1] == "2026-01-01"]
    cfg = EvaluateConfig(holdout="last_fraction", holdout_fraction=0.2, val_fraction=0)  # 1
    pairs = pairs_table([*PAIRS, ("s2", "b", "c")])
    window = split_holdout(sessions_table(one_day), pairs, cfg)
    assert window.test_sessions.column("session_id").to_pylist() == ["s2"]
    assert "s2" not in window.train_pairs.column("session_id").to_pylist()
    assert window.train_pairs.num_rows == len(PAIRS)


def test_last_day_holdout_on_one_day_falls_back_to_the_latest_sessions() -> None:
    """The first run of a new deployment has one day: it still trains, tests on its latest
    sessions, and the recorded holdout says why."""
    one_day = [s for s in SESSIONS if s[1] == "2026-01-01"]
    cfg = EvaluateConfig(holdout="last_day", holdout_fraction=0.2, val_fraction=0)

    window = split_holdout(sessions_table(one_day), pairs_table(PAIRS), cfg)

    assert window.holdout == (
        "last_fraction (20% of sessions by start time); last_day needs two days, the window holds 1"
    )
    assert window.test_sessions.num_rows >= 1 and window.train_sessions.num_rows >= 1


def test_a_last_day_with_too_few_cases_falls_back_to_the_latest_sessions() -> None:
    """The last day holds 2 next-item cases (s4, s5): under min_test_cases the gate would
    decide on too little, so the holdout is the latest share of sessions, and it says why."""
    cfg = EvaluateConfig(holdout="last_day", holdout_fraction=0.4, val_fraction=0,
                         min_test_cases=3)  # fmt: skip
    window = split_holdout(sessions_table(SESSIONS), pairs_table(PAIRS), cfg)
    assert window.holdout == (
        "last_fraction (40% of sessions by start time); the last day 2026-01-03 yields 2 "
        "next-item cases, under evaluate.min_test_cases=3"
    )
    enough = split_holdout(sessions_table(SESSIONS), pairs_table(PAIRS),
                           cfg.model_copy(update={"min_test_cases": 2}))  # fmt: skip
    assert enough.holdout == "last_day (2026-01-03)"


def test_missing_pairs_give_an_empty_typed_pairs_table() -> None:
    for pairs in (None, pairs_table([])):
        window = split_holdout(sessions_table(SESSIONS), pairs, EvaluateConfig())
        assert window.train_pairs.num_rows == window.val_pairs.num_rows == 0
        assert window.train_pairs.column("context_item").type == pa.string()
        assert window.train_pairs.column("booked_item").type == pa.string()


def test_validation_sits_between_train_and_test_in_time() -> None:
    # 1 of the 3 non-test sessions
    cfg = EvaluateConfig(holdout="last_day", val_fraction=0.34, min_test_cases=0)
    window = split_holdout(sessions_table(SESSIONS), pairs_table(PAIRS), cfg)
    assert window.train_sessions.column("session_id").to_pylist() == ["s1", "s2"]
    assert window.val_sessions.column("session_id").to_pylist() == ["s3"]
    assert sorted(window.test_sessions.column("session_id").to_pylist()) == ["s4", "s5"]
    assert window.train_pairs.column("session_id").to_pylist() == ["s1"]
    assert window.val_pairs.column("session_id").to_pylist() == ["s3"]
    assert "latest 34%" in window.validation


def test_three_way_split_is_a_partition_with_no_leak() -> None:
    rows = [(f"s{i:02d}", "2026-01-01", i, ["a", "b"]) for i in range(40)]
    pairs = pairs_table([(f"s{i:02d}", "a", "b") for i in range(40)])
    cfg = EvaluateConfig(holdout="last_fraction", holdout_fraction=0.25, val_fraction=0.2)
    window = split_holdout(sessions_table(rows), pairs, cfg)
    train, val, test = (
        set(t.column("session_id").to_pylist())
        for t in (window.train_sessions, window.val_sessions, window.test_sessions)
    )
    assert (len(train), len(val), len(test)) == (24, 6, 10)
    assert not (train & val or train & test or val & test)
    assert max(train) < min(val) and max(val) < min(test)  # ids follow start time here
    assert set(window.train_pairs.column("session_id").to_pylist()) == train
    assert set(window.val_pairs.column("session_id").to_pylist()) == val


def test_selection_picks_the_better_candidate_on_validation() -> None:
    from embedding.quality.evaluate import select_on_validation

    val = sessions_table([("v1", "2026-01-02", 0, ["a", "b", "a", "b"])])
    rows = np.eye(3, dtype=np.float32)
    ones = np.ones(3, np.int64)
    good = ItemVectors(["a", "b", "c"], rows[[0, 0, 2]], ones)  # b is a's nearest
    bad = ItemVectors(["a", "b", "c"], rows[[0, 2, 0]], ones)  # c is a's nearest
    cfg = EvaluateConfig()
    picked = select_on_validation({"word2vec": bad, "finetuned": good}, val, cfg, "mrr@20", 0)
    assert picked["chosen"] == "finetuned"
    assert picked["scores"]["finetuned"]["mrr@20"] > picked["scores"]["word2vec"]["mrr@20"]
    tie = select_on_validation({"word2vec": good, "finetuned": good}, val, cfg, "mrr@20", 0)
    assert tie["chosen"] == "word2vec"  # ties keep the base
    none = select_on_validation({"word2vec": good, "finetuned": bad}, val.slice(0, 0), cfg,
                                "mrr@20", 0)  # fmt: skip
    assert none["chosen"] == "finetuned" and none["n_cases"] == 0


def test_retention_deletes_only_days_before_the_cutoff(tmp_path: Path) -> None:
    from embedding.core.workdir import apply_retention, day_marker_path

    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        for table in ("sessions", "booking_pairs"):
            (tmp_path / table / f"dt={day}").mkdir(parents=True)
            (tmp_path / table / f"dt={day}" / "part-00000.parquet").write_bytes(b"x")
        day_marker_path(tmp_path, day).parent.mkdir(exist_ok=True)
        day_marker_path(tmp_path, day).write_text("{}")
    removed = apply_retention(tmp_path, end=date(2026, 1, 4), retention_days=2)
    assert removed == ["2026-01-01"]
    assert sorted(p.name for p in (tmp_path / "sessions").iterdir()) == [
        "dt=2026-01-02",
        "dt=2026-01-03",
    ]
    assert not day_marker_path(tmp_path, "2026-01-01").exists()
    assert apply_retention(tmp_path, end=date(2026, 1, 4), retention_days=2) == []


def test_retention_cleans_up_what_an_interrupted_day_rewrite_left_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from embedding.core.workdir import apply_retention

    for name in ("dt=2026-01-03", "dt=2026-01-03.old"):  # a crash between the two renames
        (tmp_path / "sessions" / name).mkdir(parents=True)
        (tmp_path / "sessions" / name / "part-00000.parquet").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        try:
            removed = apply_retention(tmp_path, end=date(2026, 1, 4), retention_days=2)
        except ValueError as exc:  # what every later run met before
            pytest.fail(f"retention fails on the leftover: {exc}")
    assert removed == []
    assert [p.name for p in (tmp_path / "sessions").iterdir()] == ["dt=2026-01-03"]
    assert "dt=2026-01-03.old" in caplog.text


@pytest.mark.parametrize(
    ("previous", "passed", "required"),
    [
        (None, True, 0.25),  # the first version: no predecessor, recorded
        (0.5, True, 0.45),  # 0.5 x (1 - 0.1): a small drop is tolerated
        (0.6, False, 0.54),  # a drop of more than 10% is refused
    ],
)
def test_check_gate_against_the_previous_version(
    previous: float | None, passed: bool, required: float
) -> None:
    metrics = gate_metrics(0.5, 0.25)
    if previous is not None:
        metrics["previous"] = {"version": "20260107-abcd", "hr@10": previous}
    gate = GateConfig(metric="hr@10", min_value=0.0, max_drop_vs_previous=0.1)
    verdict = check_gate(metrics, "finetuned", gate)
    assert verdict.passed is passed
    assert verdict.required == pytest.approx(required)
    assert verdict.previous_version == (None if previous is None else "20260107-abcd")
    assert ("no previous version" in verdict.reason) is (previous is None)


def test_neighbour_stability_sees_a_reshuffled_space() -> None:
    rng = np.random.default_rng(0)
    ids = [f"i{i:03d}" for i in range(300)]
    base = ItemVectors(ids, normalize_rows(rng.normal(size=(300, 16))), np.ones(300, np.int64))
    noisy = normalize_rows(base.vectors + 0.05 * rng.normal(size=(300, 16)))
    shuffled = ItemVectors(ids, normalize_rows(rng.normal(size=(300, 16))), base.counts)
    same = neighbour_stability(base, base, k=10)
    assert same == {"overlap@10": 1.0, "n_common": 300, "n_items": 300}
    close = neighbour_stability(base, ItemVectors(ids, noisy, base.counts), k=10)["overlap@10"]
    assert 0.6 < close < 1.0
    assert neighbour_stability(base, shuffled, k=10)["overlap@10"] < 0.15  # chance: 10/299
    # only the items both versions have count
    fewer = ItemVectors(ids[:100], base.vectors[:100], base.counts[:100])
    assert neighbour_stability(base, fewer, k=10)["n_common"] == 100
    assert (
        neighbour_stability(base, ItemVectors(ids[:5], base.vectors[:5], base.counts[:5]))[
            "overlap@10"
        ]
        is None
    )
