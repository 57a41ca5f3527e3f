"""Sessionize: canonical click events -> sessions and booking pairs, one partition per day.

Input: the click log named by ``--input`` (mapped and validated by ``jobs.ingest``).
Output under ``<work_dir>``: ``sessions/dt=D/`` (session_id, user_id, market, start_ts, item_ids,
booked_items, n_events), ``booking_pairs/dt=D/`` (session_id, context_item, booked_item, market),
``quarantine/<first>_<last>/`` (rejected rows with a reason), and a completion marker
``_days/D.json`` per day with its counts and content hash. Sessions are cut at the inactivity gap
(or taken from the source's session id) and always at UTC midnight, so each day is built from its
own events alone: a run over 7 days equals seven runs over one day. Rebuilding a day replaces
exactly that day's partitions.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from embedding.checksum import table_content_hash
from embedding.config import Config, SessionizeConfig
from embedding.errors import InputError
from embedding.window import day_marker_path
from jobs import columns as C
from jobs.ingest import inspect_input, map_columns, read_clicks, split_valid
from jobs.spark import get_spark

logger = logging.getLogger(__name__)

SESSIONS = "sessions"
BOOKING_PAIRS = "booking_pairs"
ITEM_STATS = "item_stats"
PAIR_SORT = [C.SESSION_ID, C.CONTEXT_ITEM, C.BOOKED_ITEM]
TABLES = {SESSIONS: [C.SESSION_ID], BOOKING_PAIRS: PAIR_SORT, ITEM_STATS: [C.ITEM_ID]}


def cut_sessions(events: DataFrame, gap_minutes: float) -> DataFrame:
    """Give each event a ``session_id``: a new session starts after a pause longer than
    ``gap_minutes``, at UTC midnight, or when the source's session id changes."""
    order = [C.TS, F.coalesce(F.col(C.SEQ), F.lit(0)), C.ITEM_ID]
    user_day = Window.partitionBy(C.USER_ID, C.DAY).orderBy(*order)
    prev_ts = F.lag(C.TS).over(user_day)
    prev_source = F.lag(C.SOURCE_SESSION_ID).over(user_day)
    gap_s = F.col(C.TS).cast("double") - prev_ts.cast("double")
    starts = (
        prev_ts.isNull()
        | (gap_s > gap_minutes * 60)
        | ~F.col(C.SOURCE_SESSION_ID).eqNullSafe(prev_source)
    )
    numbered = events.withColumn("_start", starts.cast("int")).withColumn(
        "_n", F.sum("_start").over(user_day.rowsBetween(Window.unboundedPreceding, 0))
    )
    session_id = F.concat_ws(":", C.USER_ID, C.DAY, F.lpad(F.col("_n").cast("string"), 4, "0"))
    return numbered.withColumn(C.SESSION_ID, session_id).drop("_start", "_n")


def _ordered_events(events: DataFrame) -> DataFrame:
    """One row per session with its events sorted by (ts, seq, item_id)."""
    ev = F.struct(
        F.col(C.TS).alias("ts"),
        F.coalesce(F.col(C.SEQ), F.lit(0)).alias("seq"),
        F.col(C.ITEM_ID).alias("item_id"),
        F.col(C.EVENT).alias("event"),
        F.col(C.MARKET).alias("market"),
    )
    return events.groupBy(C.SESSION_ID, C.USER_ID, C.DAY).agg(
        F.sort_array(F.collect_list(ev)).alias("events")
    )


def build_sessions(events: DataFrame, rules: SessionizeConfig) -> DataFrame:
    """Sessionized events -> one row per kept session (ordered item list, booked items)."""
    per_session = _ordered_events(events)
    items = F.transform("events", lambda e: e["item_id"])
    if rules.collapse_repeats:
        items = F.filter(items, lambda x, i: (i == 0) | (x != F.element_at(items, i)))
    sessions = per_session.select(
        C.SESSION_ID,
        C.USER_ID,
        F.col("events")[0]["market"].alias(C.MARKET),
        F.col("events")[0]["ts"].alias(C.START_TS),
        F.slice(items, 1, rules.max_session_length).alias(C.ITEM_IDS),
        F.array_distinct(
            F.transform(F.filter("events", lambda e: e["event"] == C.BOOK), lambda e: e["item_id"])
        ).alias(C.BOOKED_ITEMS),
        F.size("events").alias(C.N_EVENTS),
        C.DAY,
    )
    return sessions.where(F.size(F.array_distinct(C.ITEM_IDS)) >= rules.min_distinct_items)


def extract_booking_pairs(events: DataFrame, sessions: DataFrame) -> DataFrame:
    """(context item -> booked item) for every item interacted with before a booking in a
    kept session; self-pairs excluded; the pair's market is the booked item's."""
    per_session = _ordered_events(events).join(
        sessions.select(C.SESSION_ID), on=C.SESSION_ID, how="left_semi"
    )
    exploded = per_session.select(C.SESSION_ID, C.DAY, F.posexplode("events").alias("pos", "e"))
    bookings = exploded.where(F.col("e.event") == C.BOOK).select(
        C.SESSION_ID,
        F.col("pos").alias("book_pos"),
        F.col("e.item_id").alias(C.BOOKED_ITEM),
        F.col("e.market").alias(C.MARKET),
    )
    context = exploded.select(
        C.SESSION_ID, C.DAY, F.col("pos").alias("ctx_pos"), F.col("e.item_id").alias(C.CONTEXT_ITEM)
    )
    pairs = context.join(bookings, on=C.SESSION_ID).where(
        (F.col("ctx_pos") < F.col("book_pos")) & (F.col(C.CONTEXT_ITEM) != F.col(C.BOOKED_ITEM))
    )
    return pairs.select(
        C.SESSION_ID, C.CONTEXT_ITEM, C.BOOKED_ITEM, C.MARKET, C.DAY
    ).dropDuplicates([C.SESSION_ID, C.CONTEXT_ITEM, C.BOOKED_ITEM])


def item_stats(events: DataFrame) -> DataFrame:
    """Per item and day: events, bookings and its market (the most frequent one, ties by name)."""
    per_market = events.groupBy(C.DAY, C.ITEM_ID, C.MARKET).agg(
        F.count("*").alias(C.N_EVENTS),
        F.sum((F.col(C.EVENT) == C.BOOK).cast("long")).alias("n_bookings"),
    )
    top_market = F.max_by(C.MARKET, F.struct(C.N_EVENTS, F.col(C.MARKET)))
    return per_market.groupBy(C.DAY, C.ITEM_ID).agg(
        top_market.alias(C.MARKET),
        F.sum(C.N_EVENTS).alias(C.N_EVENTS),
        F.sum("n_bookings").alias("n_bookings"),
    )


@dataclass
class SessionizeResult:
    days: list[str]
    work_dir: str
    rows_read: int = 0
    events_valid: int = 0
    outside_days: int = 0
    dropped_by_type: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    quarantine_path: str | None = None
    sessions: int = 0
    booking_pairs: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _count_by(frame: DataFrame, column: str) -> dict[str, int]:
    rows = frame.groupBy(column).count().collect()
    return {str(r[column]): int(r["count"]) for r in sorted(rows, key=lambda r: str(r[column]))}


def day_partition(work_dir: Path, table: str, day: str) -> Path:
    return work_dir / table / f"{C.DAY}={day}"


def _replace_dir(src: Path | None, dest: Path) -> None:
    """Put ``src`` (or an empty folder) at ``dest``, replacing what was there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    if src is not None and src.exists():
        src.rename(dest)
    else:
        dest.mkdir()
    shutil.rmtree(old, ignore_errors=True)


def _commit_day(work_dir: Path, staging: Path, day: str, source: str) -> dict:
    """Move one day's staged partitions into place, then write its completion marker."""
    marker = day_marker_path(work_dir, day)
    marker.unlink(missing_ok=True)  # the day is incomplete until the new marker lands
    stats: dict = {"day": day, "source": source}
    for table, keys in TABLES.items():
        staged = staging / table / f"{C.DAY}={day}"
        for junk in staged.glob("*.crc") if staged.exists() else []:
            junk.unlink()
        _replace_dir(staged, day_partition(work_dir, table, day))
        files = sorted(day_partition(work_dir, table, day).glob("*.parquet"))
        tables = [pq.read_table(f) for f in files]
        stats[f"n_{table}"] = sum(t.num_rows for t in tables)
        stats[f"{table}_hash"] = table_content_hash(tables, keys)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stats, indent=1, sort_keys=True))
    tmp.replace(marker)
    return stats


def run_sessionize(
    cfg: Config, input_path: Path, work_dir: Path, days: list[date] | None = None
) -> SessionizeResult:
    """Validate the click log and (re)build the sessions of ``days`` (None: every day in it).

    Raises:
        InputError: missing/empty input, missing columns, no valid events, too many bad rows.
    """
    started = time.monotonic()
    info = inspect_input(input_path, cfg.source)
    spark = get_spark(cfg.spark)
    raw = read_clicks(spark, info)
    if days and "dt" in raw.columns and "dt" not in cfg.source.columns.present().values():
        lo, hi = min(days) - timedelta(days=1), max(days) + timedelta(days=1)
        raw = raw.where(F.col("dt").cast("date").between(F.lit(lo), F.lit(hi)))
    mapped = map_columns(raw, cfg.source).cache()
    try:
        rows_read = mapped.count()
        if rows_read == 0:
            raise InputError(f"{input_path}: the click log has no rows")
        split = split_valid(mapped, cfg.ingest)
        dropped = _count_by(split.dropped, C.SOURCE_EVENT)
        bad = _count_by(split.quarantined, C.REASON)
        n_bad = sum(bad.values())
        item_rows = rows_read - sum(dropped.values())
        events = split.events
        if days is None:
            found = sorted(r[C.DAY] for r in events.select(C.DAY).distinct().collect())
            if not found:
                raise InputError(f"{input_path}: no valid item events ({n_bad} rows quarantined)")
            first, last = date.fromisoformat(found[0]), date.fromisoformat(found[-1])
            days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        day_strs = sorted({d.isoformat() for d in days})
        result = SessionizeResult(
            days=day_strs, work_dir=str(work_dir), rows_read=rows_read, dropped_by_type=dropped
        )
        result.quarantined_by_reason = bad
        if item_rows and n_bad / item_rows > cfg.ingest.max_bad_share:
            raise InputError(
                f"{input_path}: {n_bad} of {item_rows} item rows ({n_bad / item_rows:.1%}) failed "
                f"validation {bad}, above ingest.max_bad_share={cfg.ingest.max_bad_share}"
            )
        in_days = events.where(F.col(C.DAY).isin(day_strs))
        n_valid = events.count()
        result.events_valid = in_days.count()
        result.outside_days = n_valid - result.events_valid
        if result.events_valid == 0:
            raise InputError(
                f"{input_path}: no valid item events on {day_strs[0]}..{day_strs[-1]} "
                f"({n_valid} valid events elsewhere, {n_bad} quarantined)"
            )
        staging = work_dir / ".staging" / f"{day_strs[0]}_{day_strs[-1]}"
        shutil.rmtree(staging, ignore_errors=True)
        if n_bad:
            qpath = work_dir / "quarantine" / f"{day_strs[0]}_{day_strs[-1]}"
            split.quarantined.coalesce(1).write.mode("overwrite").parquet(str(qpath))
            result.quarantine_path = str(qpath)
            logger.warning("quarantined %d rows %s -> %s", n_bad, bad, qpath)
        sessionized = cut_sessions(in_days, cfg.sessionize.gap_minutes).cache()
        sessions = build_sessions(sessionized, cfg.sessionize).cache()
        pairs = extract_booking_pairs(sessionized, sessions)
        frames = {SESSIONS: sessions, BOOKING_PAIRS: pairs, ITEM_STATS: item_stats(in_days)}
        for table, keys in TABLES.items():
            frames[table].repartition(C.DAY).sortWithinPartitions(*keys).write.mode(
                "overwrite"
            ).partitionBy(C.DAY).parquet(str(staging / table))
        for day in day_strs:
            stats = _commit_day(work_dir, staging, day, str(input_path))
            result.sessions += stats[f"n_{SESSIONS}"]
            result.booking_pairs += stats[f"n_{BOOKING_PAIRS}"]
        shutil.rmtree(staging, ignore_errors=True)
        sessionized.unpersist()
        sessions.unpersist()
    finally:
        mapped.unpersist()
    elapsed = time.monotonic() - started
    logger.info(
        "sessionized %d days: %d rows read (%.0f rows/s), %d valid events, %d sessions, "
        "%d booking pairs, dropped %s, quarantined %s",
        len(day_strs),
        rows_read,
        rows_read / max(elapsed, 1e-9),
        result.events_valid,
        result.sessions,
        result.booking_pairs,
        dropped,
        bad,
    )
    return result
