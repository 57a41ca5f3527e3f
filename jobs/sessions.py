"""The session rules as Spark transforms: canonical click events in, sessions, conversions,
booking pairs, item stats and shown items out; pure functions of DataFrames (no I/O), each
tested on a few rows (tests/test_spark_transforms.py).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from embedding.core.config import SessionizeConfig
from embedding.core.workdir import (
    BOOKING_PAIRS,
    CONVERSIONS,
    ITEM_STATS,
    ITEMS,
    SESSIONS,
)
from jobs import columns as C

PAIR_SORT = [C.SESSION_ID, C.CONTEXT_ITEM, C.BOOKED_ITEM]


TABLES = {
    SESSIONS: [C.SESSION_ID],
    CONVERSIONS: [C.SESSION_ID, "position"],
    BOOKING_PAIRS: PAIR_SORT,
    ITEM_STATS: [C.ITEM_ID],
    ITEMS: [C.ITEM_ID],
}


EVENT_KEY = [C.USER_ID, C.TS, C.ITEM_ID, C.EVENT, C.SEQ, C.SOURCE_SESSION_ID, C.MARKET]


def _order(*extra: str | Column) -> list:
    """Event order: ts, then seq, then item_id; event, market and the source session break the
    last ties, so a rerun always sees the same order. Per-user windows lead with the day (a
    function of ts, so the order is the same), which lets the per-(user, day) window reuse
    their sort."""
    seq = F.coalesce(F.col(C.SEQ), F.lit(0))
    return [*extra, C.TS, seq, C.ITEM_ID, C.EVENT, C.MARKET, C.SOURCE_SESSION_ID]


def cut_sessions(events: DataFrame, gap_minutes: float) -> DataFrame:
    """Give each event its session (``session_n``, numbered within user and day from 1; see
    ``session_id``) and flag exact duplicates (``is_duplicate``: the same
    ``EVENT_KEY`` as the event before it in the per-user order; dropped by the caller).

    A new session starts after a pause longer than ``gap_minutes``, at UTC midnight, or when the
    source's session id changes. ``cut_at_midnight``: the event would have continued the previous
    day's session without the midnight rule (seen only when that day is in the run). A duplicate
    has its original's time, day and source session, so it never starts a session and the
    previous event seen through it is its original's: one window pass over the events, with the
    duplicates still in, gives both the cuts and the duplicate flags, and a second one numbers
    the sessions of each user and day. Both are ordered per user, so Spark sorts the events once
    and shuffles them once.
    """
    by_user = Window.partitionBy(C.USER_ID).orderBy(*_order(C.DAY))
    prev_ts = F.lag(C.TS).over(by_user)
    gap_s = F.col(C.TS).cast("double") - prev_ts.cast("double")
    continues = (
        prev_ts.isNotNull()
        & (gap_s <= gap_minutes * 60)
        & F.col(C.SOURCE_SESSION_ID).eqNullSafe(F.lag(C.SOURCE_SESSION_ID).over(by_user))
    )
    duplicate = prev_ts.isNotNull()
    for column in EVENT_KEY:
        if column != C.USER_ID:
            duplicate = duplicate & F.lag(column).over(by_user).eqNullSafe(F.col(column))
    flagged = (
        events.withColumn("_continues", continues)
        .withColumn("_prev_day", F.lag(C.DAY).over(by_user))
        .withColumn("is_duplicate", duplicate)
        .withColumn("_start", ~F.col("_continues") | (F.col("_prev_day") != F.col(C.DAY)))
    )
    user_day = Window.partitionBy(C.USER_ID, C.DAY).orderBy(*_order())
    numbered = flagged.withColumn(
        "_n",
        F.sum(F.col("_start").cast("int")).over(user_day.rowsBetween(Window.unboundedPreceding, 0)),
    )
    midnight = F.col("_continues") & (F.col("_prev_day") != F.col(C.DAY))
    return (
        numbered.withColumnRenamed("_n", "session_n")
        .withColumn("cut_at_midnight", midnight)
        .drop("_continues", "_prev_day", "_start")
    )


def session_id(user_id: Column, day: Column, number: Column) -> Column:
    """``user:day:NNNN``, the session's number within its user and day, zero-padded to 4."""
    padded = F.when(number < 10000, F.lpad(number.cast("string"), 4, "0")).otherwise(
        number.cast("string")
    )
    return F.concat_ws(":", user_id, day, padded)


def ordered_events(events: DataFrame) -> DataFrame:
    """One row per session with its events (``all_events``) sorted by (ts, seq, item_id),
    duplicates left out, and ``n_duplicates``: the rows flagged ``is_duplicate`` (counted from
    the rows themselves, so the run's accounting can fail when an event goes missing)."""
    ev = F.struct(
        F.col(C.TS).alias("ts"),
        F.coalesce(F.col(C.SEQ), F.lit(0)).alias("seq"),
        F.col(C.ITEM_ID).alias("item_id"),
        F.col(C.EVENT).alias("event"),
        F.col(C.MARKET).alias("market"),
        F.col(C.SHOWN_ITEMS).alias("shown_items"),
        F.col(C.SHOWN_PRICES).alias("shown_prices"),
        F.col("cut_at_midnight").alias("midnight"),
    )
    duplicate = F.col("is_duplicate")
    per_session = events.groupBy(C.USER_ID, C.DAY, "session_n").agg(
        F.sort_array(F.collect_list(F.when(~duplicate, ev))).alias("all_events"),  # nulls skipped
        F.sum(duplicate.cast("int")).alias("n_duplicates"),
    )
    return per_session.select(
        session_id(F.col(C.USER_ID), F.col(C.DAY), F.col("session_n")).alias(C.SESSION_ID),
        C.USER_ID,
        C.DAY,
        "all_events",
        "n_duplicates",
    )


def drop_short_dwell(per_session: DataFrame, min_dwell_s: float | None) -> DataFrame:
    """``events``: the session's events minus the non-booking ones left within ``min_dwell_s``
    seconds for the next event of the session (Airbnb: accidental clicks; a session's last
    event never is one), with ``n_all_events``, ``n_short_dwell`` and ``cut_at_midnight`` (a kept
    event continued the previous day's session)."""
    events = F.col("all_events")
    if min_dwell_s:
        last = F.size(events) - 1

        def kept(e: Column, i: Column) -> Column:
            next_ts = F.element_at(events, i + 2)["ts"]  # element_at counts from 1
            dwell_s = next_ts.cast("double") - e["ts"].cast("double")
            return (i == last) | (e["event"] == C.BOOK) | (dwell_s >= min_dwell_s)

        events = F.filter(events, kept)
    return (
        per_session.withColumn("events", events)
        .withColumn("n_all_events", F.size("all_events"))
        .withColumn("n_short_dwell", F.size("all_events") - F.size("events"))
        .withColumn("cut_at_midnight", F.exists("events", lambda e: e["midnight"]).cast("int"))
        .drop("all_events")
    )


def build_sessions(per_session: DataFrame, rules: SessionizeConfig) -> DataFrame:
    """One row per session (kept or not: ``is_kept``), with the rule counts of each."""
    items = F.transform("events", lambda e: e["item_id"])
    collapsed = items
    if rules.collapse_repeats:
        collapsed = F.filter(items, lambda x, i: (i == 0) | (x != F.element_at(items, i)))
    return (
        per_session.select(
            C.SESSION_ID,
            C.USER_ID,
            F.col("events")[0]["market"].alias(C.MARKET),
            F.col("events")[0]["ts"].alias(C.START_TS),
            collapsed.alias("_collapsed"),
            F.array_distinct(
                F.transform(
                    F.filter("events", lambda e: e["event"] == C.BOOK), lambda e: e["item_id"]
                )
            ).alias(C.BOOKED_ITEMS),
            F.size("events").alias(C.N_EVENTS),
            "n_all_events",
            "n_short_dwell",
            "n_duplicates",
            "cut_at_midnight",
            "events",
            C.DAY,
        )
        .withColumn(C.ITEM_IDS, F.slice("_collapsed", 1, rules.max_session_length))
        .withColumn("n_collapsed", F.size("_collapsed"))
        .withColumn("is_kept", F.size(F.array_distinct("_collapsed")) >= rules.min_distinct_items)
        .drop("_collapsed")
    )


def extract_conversions(sessions: DataFrame) -> DataFrame:
    """One row per booking event of a kept session: the booked item, the distinct items
    interacted with before it (most recent first; the booked item too when it was seen before,
    which the impression re-rank needs) and what was on screen."""
    exploded = sessions.select(
        C.SESSION_ID, "events", C.DAY, F.posexplode("events").alias("position", "e")
    ).where(F.col("e.event") == C.BOOK)
    before = F.filter("events", lambda e, i: i < F.col("position"))
    context = F.array_distinct(F.reverse(F.transform(before, lambda e: e["item_id"])))
    return exploded.select(
        C.SESSION_ID,
        "position",
        F.col("e.item_id").alias(C.BOOKED_ITEM),
        context.alias("context_items"),
        F.col("e.shown_items").alias(C.SHOWN_ITEMS),
        F.col("e.market").alias(C.MARKET),
        F.col("e.ts").alias(C.TS),
        C.DAY,
    )


def extract_booking_pairs(conversions: DataFrame) -> DataFrame:
    """(context item -> booked item) per session, self-pairs excluded; the pair's market is the
    booked item's (at its first booking in the session, when it was booked more than once)."""
    exploded = conversions.select(
        C.SESSION_ID,
        F.explode("context_items").alias(C.CONTEXT_ITEM),
        C.BOOKED_ITEM,
        C.MARKET,
        "position",
        C.DAY,
    )
    exploded = exploded.where(F.col(C.CONTEXT_ITEM) != F.col(C.BOOKED_ITEM))
    return exploded.groupBy(*PAIR_SORT, C.DAY).agg(F.min_by(C.MARKET, "position").alias(C.MARKET))


def _exploded_events(sessions: DataFrame) -> DataFrame:
    """One row per kept event (``e``) of every session, kept by the session rules or not, with
    ``first_in_session``: the item's first event in that session."""
    items = F.transform("events", lambda e: e["item_id"])
    exploded = sessions.select(
        C.DAY, items.alias("_items"), F.posexplode("events").alias("_pos", "e")
    )
    first = F.array_position("_items", F.col("e.item_id")) == F.col("_pos") + 1
    return exploded.select(C.DAY, "e", first.alias("first_in_session"))


def item_stats(sessions: DataFrame) -> DataFrame:
    """Per item and day, over the kept events of all sessions: events, sessions, bookings,
    first and last seen, and its market (the most frequent one, ties by name)."""
    per_market = (
        _exploded_events(sessions)
        .groupBy(C.DAY, F.col("e.item_id").alias(C.ITEM_ID), F.col("e.market").alias(C.MARKET))
        .agg(
            F.count("*").alias(C.N_EVENTS),
            F.sum((F.col("e.event") == C.BOOK).cast("long")).alias("n_bookings"),
            F.sum(F.col("first_in_session").cast("long")).alias("n_sessions"),
            F.min("e.ts").alias("first_seen"),
            F.max("e.ts").alias("last_seen"),
        )
    )
    top_market = F.max_by(C.MARKET, F.struct(C.N_EVENTS, F.col(C.MARKET)))
    return per_market.groupBy(C.DAY, C.ITEM_ID).agg(
        top_market.alias(C.MARKET),
        F.sum(C.N_EVENTS).alias(C.N_EVENTS),
        F.sum("n_sessions").alias("n_sessions"),
        F.sum("n_bookings").alias("n_bookings"),
        F.min("first_seen").alias("first_seen"),
        F.max("last_seen").alias("last_seen"),
    )


def items_from_shown(sessions: DataFrame) -> DataFrame:
    """Item table (CONTRACTS §1b) from what was on screen at the kept events of all sessions:
    market and mean shown price."""
    shown = (
        _exploded_events(sessions)
        .where(F.col("e.shown_items").isNotNull())
        .select(
            C.DAY,
            F.col("e.market").alias(C.MARKET),
            F.col("e.shown_prices").alias(C.SHOWN_PRICES),
            F.posexplode("e.shown_items").alias("_pos", C.ITEM_ID),
        )
    )
    price = F.when(
        F.col(C.SHOWN_PRICES).isNotNull() & (F.size(C.SHOWN_PRICES) > F.col("_pos")),
        F.element_at(C.SHOWN_PRICES, F.col("_pos") + 1),
    )
    per_market = (
        shown.withColumn("price", price)
        .groupBy(C.DAY, C.ITEM_ID, C.MARKET)
        .agg(F.count("*").alias("n_shown"), F.avg("price").alias("price"))
    )
    return per_market.groupBy(C.DAY, C.ITEM_ID).agg(
        F.max_by(C.MARKET, F.struct("n_shown", F.col(C.MARKET))).alias(C.MARKET),
        (F.sum(F.col("price") * F.col("n_shown")) / F.sum("n_shown")).alias("price"),
        F.sum("n_shown").alias("n_shown"),
    )


def rule_counts(sessions: DataFrame) -> dict[str, int]:
    kept = F.col("is_kept")
    row = sessions.agg(
        F.sum("n_all_events").alias("events_valid"),
        F.sum("n_duplicates").alias("duplicates"),
        F.sum("n_short_dwell").alias("short_dwell_dropped"),
        F.sum(F.when(kept, 1).otherwise(0)).alias("sessions"),
        F.sum(F.when(~kept, 1).otherwise(0)).alias("short_sessions"),
        F.sum(F.when(~kept, F.col(C.N_EVENTS)).otherwise(0)).alias("short_session_events"),
        F.sum(F.when(kept, F.col(C.N_EVENTS)).otherwise(0)).alias("session_events"),
        F.sum(F.when(kept, F.size(C.ITEM_IDS)).otherwise(0)).alias("session_items"),
        F.sum(F.when(kept, F.col(C.N_EVENTS) - F.col("n_collapsed")).otherwise(0)).alias(
            "collapsed_repeats"
        ),
        F.sum(F.when(kept & (F.col("n_collapsed") > F.size(C.ITEM_IDS)), 1).otherwise(0)).alias(
            "truncated_sessions"
        ),
        F.sum(F.when(kept, F.col("n_collapsed") - F.size(C.ITEM_IDS)).otherwise(0)).alias(
            "truncated_events"
        ),
        F.sum(F.when(kept, F.col("cut_at_midnight")).otherwise(0)).alias(
            "sessions_cut_at_midnight"
        ),
    ).first()
    return {k: int(v or 0) for k, v in row.asDict().items()}
