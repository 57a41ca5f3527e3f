"""Sessionize: canonical click events -> sessions, conversions and booking pairs, per day.

Input: the click log named by ``--input`` (mapped and validated by ``jobs.ingest``).
Output under ``<work_dir>``, one partition ``dt=D`` per session day:
``sessions`` (session_id, user_id, market, start_ts, item_ids, booked_items, n_events),
``conversions`` (session_id, position, booked_item, context_items, shown_items, market, ts),
``booking_pairs`` (session_id, context_item, booked_item, market), ``item_stats`` (item_id,
market, n_events, n_sessions, n_bookings, first_seen, last_seen) and, when the source has shown
items with prices, ``items`` (item_id, market, price, n_shown); ``quarantine/<first>_<last>/``
holds rejected rows with a reason, and ``_days/D.json`` marks a day complete (counts and content
hashes). Rules (Airbnb KDD'18 defaults, all in config): the source's session id or a 30-minute
gap, always a cut at UTC midnight (so a 7-day run equals seven 1-day runs), short-dwell events
dropped, consecutive repeats collapsed, sessions of fewer than 2 distinct items dropped, long
sessions truncated. Rebuilding a day replaces exactly that day's partitions.

    python -m jobs.sessionize --input data/clicks --work-dir publish/.work [--days 2026-01-01,...]
    spark-submit --master spark://127.0.0.1:7077 jobs/sessionize.py --input ... --work-dir ...
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedding.core import chaos
from embedding.core.atomic import fsync_dir, fsync_tree, write_text_atomic
from embedding.core.checksum import SESSIONIZE_ROOTS, source_hash, table_content_hash
from embedding.core.config import Config, SessionizeConfig
from embedding.core.errors import EmbeddingError, InputError
from embedding.core.ingest_summary import SessionizeResult
from embedding.core.lock import held_here
from embedding.core.workdir import (
    BOOKING_PAIRS,
    CONVERSIONS,
    ITEM_STATS,
    ITEMS,
    SESSIONS,
    day_marker_path,
    read_marker,
)
from jobs import columns as C
from jobs.ingest import (
    flag_rows,
    inspect_input,
    map_columns,
    quarantined_rows,
    read_clicks,
    valid_events,
)
from jobs.items import read_item_table
from jobs.spark import get_spark
from jobs.user_hash import hash_users, resolve_salt

logger = logging.getLogger(__name__)

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


def _ordered_events(events: DataFrame) -> DataFrame:
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


def _count_by(frame: DataFrame, column: str) -> dict[str, int]:
    rows = frame.groupBy(column).count().collect()
    return {str(r[column]): int(r["count"]) for r in sorted(rows, key=lambda r: str(r[column]))}


def day_partition(work_dir: Path, table: str, day: str) -> Path:
    return work_dir / table / f"{C.DAY}={day}"


def _replace_dir(src: Path | None, dest: Path) -> None:
    """Put ``src`` (or an empty folder) at ``dest``, replacing what was there; the files and
    both renames are flushed to disk (a day marker is written only after this)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    if src is not None and src.exists():
        fsync_tree(src)
        src.rename(dest)
    else:
        dest.mkdir()
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


STALE_STAGING_S = 3600.0  # a staging folder untouched this long belongs to a dead run


def staging_folder(work_dir: Path, day_strs: list[str]) -> Path:
    """A staging folder of this run's own (``.staging/<first>_<last>-<nonce>``), after removing
    the ones a killed run left: all of them when this process holds the work folder's lock,
    else those untouched for an hour."""
    parent = work_dir / ".staging"
    exclusive = held_here(work_dir)
    for old in sorted(parent.iterdir()) if parent.is_dir() else []:
        try:
            stale = exclusive or time.time() - old.stat().st_mtime > STALE_STAGING_S
        except OSError:
            continue
        if stale:
            logger.warning("removing %s, left by a run that did not finish", old)
            shutil.rmtree(old, ignore_errors=True)
    return parent / f"{day_strs[0]}_{day_strs[-1]}-{uuid.uuid4().hex[:8]}"


def commit_day(
    work_dir: Path,
    staging: Path,
    day: str,
    source: str,
    n_events: int | None = None,
    code_hash: str | None = None,
) -> dict:
    """Move one day's staged partitions into place, then write its completion marker.

    The marker records the day's valid source events (``n_events``: the completeness check
    compares days by it) and the hash of the code that built the partitions.
    """
    marker = day_marker_path(work_dir, day)
    marker.unlink(missing_ok=True)  # the day is incomplete until the new marker lands
    stats: dict = {"day": day, "source": source}
    if n_events is not None:
        stats["n_events"] = n_events
    if code_hash is not None:
        stats["code_hash"] = code_hash
    for table, keys in TABLES.items():
        staged = staging / table / f"{C.DAY}={day}"
        for junk in staged.glob(".*.crc") if staged.exists() else []:
            junk.unlink()
        for i, part in enumerate(sorted(staged.glob("*.parquet")) if staged.exists() else []):
            part.rename(staged / f"part-{i:05d}.parquet")  # stable names: reruns look alike
        _replace_dir(staged, day_partition(work_dir, table, day))
        files = sorted(day_partition(work_dir, table, day).glob("*.parquet"))
        tables = [pq.read_table(f) for f in files]
        stats[f"n_{table}"] = sum(t.num_rows for t in tables)
        stats[f"{table}_hash"] = table_content_hash(tables, keys)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(stats, indent=1, sort_keys=True))
    return stats


def _rule_counts(sessions: DataFrame) -> dict[str, int]:
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


def _read_flagged(cfg: Config, input_path: Path, days: list[date] | None) -> DataFrame:
    """Source rows mapped onto the contract, each with its quarantine ``reason`` (or null)."""
    info = inspect_input(input_path, cfg.source)
    if info.unused:
        logger.info(
            "%s has no %s column: unused (%s)",
            input_path,
            ", ".join(info.unused),
            "; ".join(UNUSED_MEANS[c] for c in info.unused if c in UNUSED_MEANS),
        )
    raw = read_clicks(get_spark(cfg.spark), info)
    if days and "dt" in raw.columns and "dt" not in cfg.source.columns.present().values():
        lo, hi = min(days) - timedelta(days=1), max(days) + timedelta(days=1)
        raw = raw.where(F.col("dt").cast("date").between(F.lit(lo), F.lit(hi)))
    ts_max = None
    if days:
        end = datetime.combine(max(days) + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        ts_max = end + timedelta(hours=cfg.ingest.lateness_hours)
    return flag_rows(map_columns(raw, info.source), cfg.ingest, ts_max)


UNUSED_MEANS = {
    "event": "every row is a click",
    "session_id": "sessions are cut at the inactivity gap",
    "user_id": "the session id stands for the user",
    "market": "negatives are drawn from all items",
}
# a day under this share of the median day's rows ... (1%, not 0.1%: on a log of 1,500 rows a
# day, 0.1% is under one row, and a day of 3 rows dated years later would stay)
OUTLIER_SHARE = 0.01
OUTLIER_DAYS = 2  # ... and more than this many days from every larger day is an outlier


def check_accounting(result: SessionizeResult, in_days_valid: int) -> None:
    """Every valid row of the run's days ends in exactly one place: a duplicate, or an event of
    a session (whose rules split it further). Both sides are counted from the rows, so a row
    lost in between is an error, never a silent remainder.

    Raises:
        EmbeddingError: the counts disagree (a bug, not bad input).
    """
    placed = result.duplicates + result.events_valid
    if placed != in_days_valid:
        raise EmbeddingError(
            f"row accounting failed: {in_days_valid} valid rows on the run's days, but "
            f"{result.duplicates} duplicates + {result.events_valid} session events = {placed}; "
            f"{in_days_valid - placed} rows went missing in sessionization"
        )


def kept_complete_days(work_dir: Path, days: list[str], valid_by_day: dict[str, int]) -> list[str]:
    """The ``days`` the input has no valid event on but the work folder holds complete, with
    events: rewriting them would blank them."""
    kept = []
    for day in days:
        if valid_by_day.get(day, 0) == 0:
            marker = read_marker(work_dir, day)
            if marker is not None and marker.get("n_events", 0) > 0:
                kept.append(day)
    return kept


def outlier_days(valid_by_day: dict[str, int]) -> list[str]:
    """Days far from the bulk of the log in time, whose rows must not stretch the run's window.

    A day is an outlier when it holds under ``OUTLIER_SHARE`` of the median day's rows and lies
    more than ``OUTLIER_DAYS`` days from every day that is not that small. The median day is
    the row-weighted median (the day count that the median row's day has), so a long tail of
    near-empty days cannot pull it down. Pure function of the per-day counts.
    """
    if len(valid_by_day) < 2:
        return []
    days = sorted(valid_by_day)
    counts = np.array([valid_by_day[d] for d in days], dtype=np.int64)
    by_size = np.sort(counts)
    cumulative = np.cumsum(by_size)
    median_day = by_size[np.searchsorted(cumulative, cumulative[-1] / 2)]
    small = counts < OUTLIER_SHARE * median_day
    if small.all():
        return []
    ordinals = np.array([date.fromisoformat(d).toordinal() for d in days])
    bulk = ordinals[~small]
    distance = np.abs(ordinals[:, None] - bulk[None, :]).min(axis=1)
    return [d for d, s, gap in zip(days, small, distance, strict=True) if s and gap > OUTLIER_DAYS]


def _count_rows(flagged: DataFrame) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """One pass over the source: rows dropped per source event, quarantined per reason, and
    valid per day."""
    kind = (
        F.when(F.col(C.REASON).isNotNull(), "bad")
        .when(F.col(C.EVENT) == C.DROP, "drop")
        .otherwise("valid")
    )
    key = (
        F.when(F.col(C.REASON).isNotNull(), F.col(C.REASON))
        .when(F.col(C.EVENT) == C.DROP, F.col(C.SOURCE_EVENT))
        .otherwise(F.to_date(C.TS).cast("string"))
    )
    counts: dict[str, dict[str, int]] = {"bad": {}, "drop": {}, "valid": {}}
    for row in flagged.groupBy(kind.alias("kind"), key.alias("key")).count().collect():
        counts[row["kind"]][str(row["key"])] = int(row["count"])
    return tuple(dict(sorted(counts[k].items())) for k in ("drop", "bad", "valid"))


def _phase(what: str, started: float) -> None:
    logger.info("%s (%.1f s since the start)", what, time.monotonic() - started)


def run_sessionize(
    cfg: Config,
    input_path: Path,
    work_dir: Path,
    days: list[date] | None = None,
    items_path: Path | None = None,
) -> SessionizeResult:
    """Validate the click log and (re)build the sessions of ``days`` (None: every day in it);
    with ``items_path``, each day's ``items`` partition holds that item table's valid rows.

    Raises:
        InputError: missing/empty input, missing columns, no valid events, too many bad rows.
    """
    started = time.monotonic()
    rules = cfg.sessionize
    # resolved first: a salt too short stops the run before any event is read
    salt, salt_source = (b"", None)
    if rules.hash_user_ids:
        salt, salt_source = resolve_salt(rules.salt_env, work_dir)
    flagged = _read_flagged(cfg, input_path, days)
    dropped, bad, valid_by_day = _count_rows(flagged)
    if days is None and (outliers := outlier_days(valid_by_day)):
        # quarantined with their own reason: they would stretch the window and name the version
        n_out = sum(valid_by_day.pop(d) for d in outliers)
        bad = dict(sorted({**bad, C.TS_OUTLIER: n_out}.items()))
        logger.warning(
            "%d rows on %d days far from the rest of the log (%s..%s) quarantined as %s",
            n_out, len(outliers), outliers[0], outliers[-1], C.TS_OUTLIER,
        )  # fmt: skip
        is_outlier = (
            F.col(C.REASON).isNull()
            & (F.col(C.EVENT) != C.DROP)
            & F.to_date(C.TS).cast("string").isin(outliers)
        )
        flagged = flagged.withColumn(
            C.REASON, F.when(is_outlier, F.lit(C.TS_OUTLIER)).otherwise(F.col(C.REASON))
        )
    _phase("validated the source", started)
    rows_read = sum(dropped.values()) + sum(bad.values()) + sum(valid_by_day.values())
    if rows_read == 0:
        raise InputError(f"{input_path}: the click log has no rows")
    n_bad = sum(bad.values())
    item_rows = rows_read - sum(dropped.values())
    if item_rows and n_bad / item_rows > cfg.ingest.max_bad_share:
        raise InputError(
            f"{input_path}: {n_bad} of {item_rows} item rows ({n_bad / item_rows:.1%}) failed "
            f"validation {bad}, above ingest.max_bad_share={cfg.ingest.max_bad_share}"
        )
    if days is None:
        if not valid_by_day:
            raise InputError(f"{input_path}: no valid item events ({n_bad} rows quarantined)")
        first, last = date.fromisoformat(min(valid_by_day)), date.fromisoformat(max(valid_by_day))
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    day_strs = sorted({d.isoformat() for d in days})
    in_days_valid = sum(valid_by_day.get(d, 0) for d in day_strs)
    result = SessionizeResult(
        days=day_strs,
        work_dir=str(work_dir),
        rows_read=rows_read,
        dropped_by_type=dropped,
        quarantined_by_reason=bad,
        outside_days=sum(valid_by_day.values()) - in_days_valid,
    )
    if in_days_valid == 0:
        raise InputError(
            f"{input_path}: no valid item events on {day_strs[0]}..{day_strs[-1]} "
            f"({result.outside_days} valid events elsewhere, {n_bad} quarantined)"
        )
    # a complete day is never rewritten from input that lacks it (a run on a partial log)
    kept = kept_complete_days(work_dir, day_strs, valid_by_day)
    result.kept_days = kept
    if kept:
        logger.warning(
            "%s has no events on %d days the work folder holds complete (%s..%s): kept as "
            "they are, not rewritten empty",
            input_path, len(kept), kept[0], kept[-1],
        )  # fmt: skip
    item_table = None
    if items_path is not None:
        item_table, rejected_items, table_result = read_item_table(
            get_spark(cfg.spark), cfg, items_path
        )
        result.item_table = table_result.to_dict()
    staging = staging_folder(work_dir, day_strs)
    if item_table is not None and table_result.quarantined_by_reason:
        qpath = work_dir / "quarantine_items" / f"{day_strs[0]}_{day_strs[-1]}"
        rejected_items.coalesce(1).write.mode("overwrite").parquet(str(qpath))
        result.item_table["quarantine_path"] = str(qpath)
        logger.warning(
            "item table: quarantined %s -> %s", table_result.quarantined_by_reason, qpath
        )
    if n_bad:
        qpath = work_dir / "quarantine" / f"{day_strs[0]}_{day_strs[-1]}"
        quarantined_rows(flagged).coalesce(1).write.mode("overwrite").parquet(str(qpath))
        result.quarantine_path = str(qpath)
        logger.warning("quarantined %d rows %s -> %s", n_bad, bad, qpath)
    events = (
        valid_events(flagged).where(F.col(C.DAY).isin(day_strs)).drop(C.SOURCE_FILE, C.SOURCE_EVENT)
    )
    if rules.hash_user_ids:
        result.user_salt_source = salt_source
        events = hash_users(events, salt)
    # hash-partitioned by (hashed) user once: the dedupe, every session window and the
    # per-session grouping all reuse that layout, so the events are shuffled once
    sessionized = cut_sessions(events.repartition(C.USER_ID), rules.gap_minutes)
    per_session = _ordered_events(sessionized)
    all_sessions = build_sessions(drop_short_dwell(per_session, rules.min_dwell_s), rules).cache()
    try:
        for key, value in _rule_counts(all_sessions).items():
            setattr(result, key, value)
        check_accounting(result, in_days_valid)
        _phase("built sessions", started)
        sessions = all_sessions.where("is_kept")
        conversions = extract_conversions(sessions).cache()
        frames = {
            SESSIONS: sessions.select(
                C.SESSION_ID, C.USER_ID, C.MARKET, C.START_TS, C.ITEM_IDS, C.BOOKED_ITEMS,
                C.N_EVENTS, C.DAY,
            ),
            CONVERSIONS: conversions,
            BOOKING_PAIRS: extract_booking_pairs(conversions),
            ITEM_STATS: item_stats(all_sessions),
        }  # fmt: skip
        if cfg.source.items_from_shown:
            frames[ITEMS] = items_from_shown(all_sessions)
        elif item_table is not None:
            day_frame = get_spark(cfg.spark).createDataFrame([(d,) for d in day_strs], [C.DAY])
            frames[ITEMS] = item_table.crossJoin(day_frame)
        for table, frame in frames.items():
            frame.repartition(C.DAY).sortWithinPartitions(*TABLES[table]).write.mode(
                "overwrite"
            ).partitionBy(C.DAY).parquet(str(staging / table))
            _phase(f"wrote {table}", started)
        chaos.point("sessionize.staged")
        code_hash = source_hash(SESSIONIZE_ROOTS)
        for day in day_strs:
            if day in kept:
                continue
            stats = commit_day(
                work_dir, staging, day, str(input_path), valid_by_day.get(day, 0), code_hash
            )
            result.conversions += stats[f"n_{CONVERSIONS}"]
            result.booking_pairs += stats[f"n_{BOOKING_PAIRS}"]
            chaos.point("sessionize.committing")
        _phase("committed the days", started)
        shutil.rmtree(staging, ignore_errors=True)
        conversions.unpersist()
    finally:
        all_sessions.unpersist()
    result.seconds = round(time.monotonic() - started, 2)
    logger.info(
        "sessionized %d days in %.1f s (%.0f rows/s): %d rows, %d valid events, %d sessions, "
        "%d conversions, %d booking pairs; dropped %s, quarantined %s, %d duplicates, "
        "%d short-dwell, %d truncated sessions, %d cut at midnight",
        len(day_strs),
        result.seconds,
        rows_read / max(result.seconds, 1e-9),
        rows_read,
        result.events_valid,
        result.sessions,
        result.conversions,
        result.booking_pairs,
        dropped,
        bad,
        result.duplicates,
        result.short_dwell_dropped,
        result.truncated_sessions,
        result.sessions_cut_at_midnight,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m jobs.sessionize`` and ``spark-submit jobs/sessionize.py``."""
    from embedding import PROJECT_ROOT
    from embedding.core.config import load_config

    parser = argparse.ArgumentParser(description="validate a click log and sessionize it")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--conf", type=Path, default=PROJECT_ROOT / "conf" / "default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--items", type=Path, default=None, help="item table file or folder")
    parser.add_argument("--days", default=None, help="comma-separated days (default: all)")
    parser.add_argument("--result-json", type=Path, default=None, help="also write the summary")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.conf, args.overrides)
        days = [date.fromisoformat(d) for d in args.days.split(",")] if args.days else None
        items = args.items.resolve() if args.items else None
        result = run_sessionize(cfg, args.input.resolve(), args.work_dir.resolve(), days, items)
    except EmbeddingError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        if args.result_json:  # for a launcher: the message whole, whatever its lines
            error = {"error": str(exc), "exit_code": exc.exit_code}
            args.result_json.write_text(json.dumps(error, indent=1))
        return exc.exit_code
    summary = json.dumps(result.to_dict(), indent=1)
    if args.result_json:
        args.result_json.write_text(summary)
    print(summary)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
