"""The Spark transforms of ``jobs/`` one at a time, on a few rows built inline, compared whole
with ``pyspark.testing.assertDataFrameEqual`` (the whole-stage runs are in test_session_rules
and test_sessionize)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from embedding.core.config import IngestConfig, SessionizeConfig
from jobs import columns as C
from jobs.ingest import flag_rows
from jobs.sessions import (
    build_sessions,
    cut_sessions,
    drop_short_dwell,
    extract_booking_pairs,
    extract_conversions,
    item_stats,
)

T0 = datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
EVENT_SCHEMA = (
    "user_id string, ts timestamp, item_id string, event string, seq long, "
    "source_session_id string, market string, dt string"
)


def _events(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    """(user, minutes after T0, item, event) rows, one market, no seq or source session."""
    full = []
    for user, minutes, item, event in rows:
        ts = T0 + timedelta(minutes=minutes)
        full.append((user, ts, item, event, None, None, "m1", ts.strftime("%Y-%m-%d")))
    return spark.createDataFrame(full, EVENT_SCHEMA)


def test_cut_sessions_cuts_on_the_gap_and_at_midnight_and_flags_exact_duplicates(
    spark: SparkSession,
) -> None:
    events = _events(
        spark,
        [
            ("u1", 0, "a", "click"),
            ("u1", 0, "a", "click"),  # the same event twice: a duplicate
            ("u1", 10, "b", "click"),  # 10 min later: same session
            ("u1", 50, "c", "click"),  # past midnight (T0 is 23:00): a new day, a new session
            ("u1", 200, "d", "click"),  # 150 min gap: a new session
            ("u2", 5, "a", "click"),  # another user: sessions of its own
        ],
    )
    cut = cut_sessions(events, gap_minutes=30).select(
        C.USER_ID, C.ITEM_ID, C.DAY, "session_n", "is_duplicate", "cut_at_midnight"
    )
    expected = [
        Row(user_id="u1", item_id="a", dt="2026-01-01", session_n=1, is_duplicate=False,
            cut_at_midnight=False),
        Row(user_id="u1", item_id="a", dt="2026-01-01", session_n=1, is_duplicate=True,
            cut_at_midnight=False),
        Row(user_id="u1", item_id="b", dt="2026-01-01", session_n=1, is_duplicate=False,
            cut_at_midnight=False),
        Row(user_id="u1", item_id="c", dt="2026-01-01", session_n=2, is_duplicate=False,
            cut_at_midnight=False),
        Row(user_id="u1", item_id="d", dt="2026-01-02", session_n=1, is_duplicate=False,
            cut_at_midnight=False),
        Row(user_id="u2", item_id="a", dt="2026-01-01", session_n=1, is_duplicate=False,
            cut_at_midnight=False),
    ]  # fmt: skip
    assertDataFrameEqual(cut, expected)


def test_cut_sessions_marks_a_session_cut_only_by_midnight(spark: SparkSession) -> None:
    events = _events(spark, [("u1", 50, "a", "click"), ("u1", 65, "b", "click")])  # 23:50, 00:05
    cut = cut_sessions(events, gap_minutes=30).select(
        C.ITEM_ID, C.DAY, "session_n", "cut_at_midnight"
    )
    assertDataFrameEqual(
        cut,
        [
            Row(item_id="a", dt="2026-01-01", session_n=1, cut_at_midnight=False),
            Row(item_id="b", dt="2026-01-02", session_n=1, cut_at_midnight=True),
        ],
    )


def _session(spark: SparkSession, events: list[tuple[int, str, str]]) -> DataFrame:
    """One session's ``all_events`` as ``ordered_events`` builds it: (seconds, item, event)."""
    structs = [
        Row(ts=T0 + timedelta(seconds=s), seq=0, item_id=i, event=e, market="m1",
            shown_items=None, shown_prices=None, midnight=False)
        for s, i, e in events
    ]  # fmt: skip
    schema = (
        "session_id string, user_id string, dt string, n_duplicates long, all_events "
        "array<struct<ts: timestamp, seq: long, item_id: string, event: string, market: string, "
        "shown_items: array<string>, shown_prices: array<double>, midnight: boolean>>"
    )
    return spark.createDataFrame([("s1", "u1", "2026-01-01", 0, structs)], schema)


def test_short_dwell_drops_quick_clicks_but_never_a_booking_or_the_last_event(
    spark: SparkSession,
) -> None:
    session = _session(
        spark,
        [(0, "a", "click"), (2, "b", "click"), (60, "c", "book"), (61, "d", "click")],
    )  # a: 2 s dwell (dropped), b: 58 s (kept), c: a booking (kept), d: the last (kept)
    kept = drop_short_dwell(session, min_dwell_s=5).select(
        F.transform("events", lambda e: e["item_id"]).alias("items"), "n_short_dwell"
    )
    assertDataFrameEqual(kept, [Row(items=["b", "c", "d"], n_short_dwell=1)])


def test_build_sessions_collapses_repeats_caps_length_and_keeps_by_distinct_items(
    spark: SparkSession,
) -> None:
    session = drop_short_dwell(
        _session(
            spark,
            [(0, "a", "click"), (60, "a", "click"), (120, "b", "book"), (180, "c", "click")],
        ),
        None,
    )
    rules = SessionizeConfig(collapse_repeats=True, max_session_length=2, min_distinct_items=2)
    built = build_sessions(session, rules).select(
        C.ITEM_IDS, C.BOOKED_ITEMS, C.N_EVENTS, "n_collapsed", "is_kept"
    )
    assertDataFrameEqual(
        built,
        [Row(item_ids=["a", "b"], booked_items=["b"], n_events=4, n_collapsed=3, is_kept=True)],
    )
    strict = SessionizeConfig(collapse_repeats=True, max_session_length=2, min_distinct_items=4)
    assertDataFrameEqual(build_sessions(session, strict).select("is_kept"), [Row(is_kept=False)])


def test_booking_pairs_pair_every_earlier_item_with_the_booked_one_without_self_pairs(
    spark: SparkSession,
) -> None:
    session = build_sessions(
        drop_short_dwell(
            _session(
                spark,
                [(0, "a", "click"), (60, "b", "click"), (120, "a", "click"), (180, "b", "book")],
            ),
            None,
        ),
        SessionizeConfig(),
    )
    conversions = extract_conversions(session)
    assertDataFrameEqual(
        conversions.select(C.BOOKED_ITEM, "context_items", "position"),
        [Row(booked_item="b", context_items=["a", "b"], position=3)],  # most recent first
    )
    assertDataFrameEqual(
        extract_booking_pairs(conversions).select(C.CONTEXT_ITEM, C.BOOKED_ITEM, C.MARKET),
        [Row(context_item="a", booked_item="b", market="m1")],  # b -> b left out
    )


def test_item_stats_count_events_sessions_and_bookings_per_item_and_day(
    spark: SparkSession,
) -> None:
    session = build_sessions(
        drop_short_dwell(
            _session(spark, [(0, "a", "click"), (60, "a", "click"), (120, "b", "book")]), None
        ),
        SessionizeConfig(),
    )
    stats = item_stats(session).select(
        C.ITEM_ID, C.MARKET, C.N_EVENTS, "n_sessions", "n_bookings", "first_seen", "last_seen"
    )
    assertDataFrameEqual(
        stats,
        [
            Row(item_id="a", market="m1", n_events=2, n_sessions=1, n_bookings=0,
                first_seen=T0.replace(tzinfo=None), last_seen=(T0 + timedelta(seconds=60))
                .replace(tzinfo=None)),
            Row(item_id="b", market="m1", n_events=1, n_sessions=1, n_bookings=1,
                first_seen=(T0 + timedelta(seconds=120)).replace(tzinfo=None),
                last_seen=(T0 + timedelta(seconds=120)).replace(tzinfo=None)),
        ],
    )  # fmt: skip


FLAG_SCHEMA = (
    "user_id string, ts timestamp, item_id string, source_event string, event string, "
    "_bad_seq boolean"
)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (("u1", T0, "a", "clk", "click", False), None),
        (("u1", T0, "a", "filter", "drop", False), None),  # mapped to drop: not an item event
        (("u1", T0, "a", None, None, False), "missing_event"),
        (("u1", T0, "a", "zoom", None, False), "unknown_event"),
        ((None, T0, "a", "clk", "click", False), "missing_user_id"),
        (("u1", T0, None, "clk", "click", False), "missing_item_id"),
        (("u1", None, "a", "clk", "click", False), "bad_ts"),
        (("u1", datetime(1990, 1, 1, tzinfo=UTC), "a", "clk", "click", False), "ts_out_of_range"),
        (("u" * 300, T0, "a", "clk", "click", False), "id_too_long"),
        (("u1", T0, "a", "clk", "click", True), "wrong_type_seq"),
    ],
)
def test_flag_rows_names_the_first_failed_check_of_each_row(
    spark: SparkSession, row: tuple, reason: str | None
) -> None:
    mapped = spark.createDataFrame([row], FLAG_SCHEMA)
    flagged = flag_rows(mapped, IngestConfig()).select(C.REASON)
    assertDataFrameEqual(flagged, [Row(reason=reason)])
