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
from datetime import date
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedding.core import chaos
from embedding.core.checksum import SESSIONIZE_ROOTS, source_hash
from embedding.core.config import Config
from embedding.core.errors import EmbeddingError
from embedding.core.ingest_summary import SessionizeResult
from embedding.core.workdir import (
    BOOKING_PAIRS,
    CONVERSIONS,
    ITEM_STATS,
    ITEMS,
    SESSIONS,
)
from jobs import columns as C
from jobs.days import commit_day, kept_complete_days, staging_folder
from jobs.ingest import (
    quarantined_rows,
    valid_events,
)
from jobs.items import read_item_table
from jobs.sessions import (
    TABLES,
    build_sessions,
    cut_sessions,
    drop_short_dwell,
    extract_booking_pairs,
    extract_conversions,
    item_stats,
    items_from_shown,
    ordered_events,
    rule_counts,
)
from jobs.source import Source, validate_source
from jobs.spark import get_spark
from jobs.user_hash import hash_users, resolve_salt

logger = logging.getLogger(__name__)


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


def _phase(what: str, started: float) -> None:
    logger.info("%s (%.1f s since the start)", what, time.monotonic() - started)


def _quarantine(
    cfg: Config, work_dir: Path, source: Source, items_path: Path | None, result: SessionizeResult
) -> DataFrame | None:
    """Write the rejected rows (and the item table's) under ``quarantine*/``; the valid item
    table rows, when an item table is given."""
    first_last = f"{source.days[0]}_{source.days[-1]}"
    item_table = None
    if items_path is not None:
        item_table, rejected_items, table_result = read_item_table(
            get_spark(cfg.spark), cfg, items_path
        )
        result.item_table = table_result.to_dict()
        if table_result.quarantined_by_reason:
            qpath = work_dir / "quarantine_items" / first_last
            rejected_items.coalesce(1).write.mode("overwrite").parquet(str(qpath))
            result.item_table["quarantine_path"] = str(qpath)
            logger.warning(
                "item table: quarantined %s -> %s", table_result.quarantined_by_reason, qpath
            )
    if sum(source.bad.values()):
        qpath = work_dir / "quarantine" / first_last
        quarantined_rows(source.flagged).coalesce(1).write.mode("overwrite").parquet(str(qpath))
        result.quarantine_path = str(qpath)
        logger.warning("quarantined %d rows %s -> %s", sum(source.bad.values()), source.bad, qpath)
    return item_table


def _all_sessions(cfg: Config, source: Source, salt: bytes | None) -> DataFrame:
    """Every session of the run's days, kept or not (``is_kept``), with its rule counts."""
    rules = cfg.sessionize
    events = (
        valid_events(source.flagged)
        .where(F.col(C.DAY).isin(source.days))
        .drop(C.SOURCE_FILE, C.SOURCE_EVENT)
    )
    if salt is not None:
        events = hash_users(events, salt)
    # hash-partitioned by (hashed) user once: the dedupe, every session window and the
    # per-session grouping all reuse that layout, so the events are shuffled once
    sessionized = cut_sessions(events.repartition(C.USER_ID), rules.gap_minutes)
    per_session = ordered_events(sessionized)
    return build_sessions(drop_short_dwell(per_session, rules.min_dwell_s), rules)


def _frames(
    cfg: Config, all_sessions: DataFrame, conversions: DataFrame, days: list[str], item_table
) -> dict[str, DataFrame]:
    """The tables to write, by name (``embedding.core.workdir``)."""
    sessions = all_sessions.where("is_kept")
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
        day_frame = get_spark(cfg.spark).createDataFrame([(d,) for d in days], [C.DAY])
        frames[ITEMS] = item_table.crossJoin(day_frame)
    return frames


def _write_days(
    work_dir: Path,
    input_path: Path,
    source: Source,
    frames: dict[str, DataFrame],
    result: SessionizeResult,
    started: float,
) -> None:
    """Stage every table partitioned by day, then commit the days one at a time (a complete
    day the input lacks is kept as it is)."""
    staging = staging_folder(work_dir, source.days)
    for table, frame in frames.items():
        frame.repartition(C.DAY).sortWithinPartitions(*TABLES[table]).write.mode(
            "overwrite"
        ).partitionBy(C.DAY).parquet(str(staging / table))
        _phase(f"wrote {table}", started)
    chaos.point("sessionize.staged")
    code_hash = source_hash(SESSIONIZE_ROOTS)
    for day in source.days:
        if day in result.kept_days:
            continue
        stats = commit_day(
            work_dir, staging, day, str(input_path), source.valid_by_day.get(day, 0), code_hash
        )
        result.conversions += stats[f"n_{CONVERSIONS}"]
        result.booking_pairs += stats[f"n_{BOOKING_PAIRS}"]
        chaos.point("sessionize.committing")
    _phase("committed the days", started)
    shutil.rmtree(staging, ignore_errors=True)


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
    # resolved first: a salt too short stops the run before any event is read
    salt, salt_source = None, None
    if cfg.sessionize.hash_user_ids:
        salt, salt_source = resolve_salt(cfg.sessionize.salt_env, work_dir)
    source = validate_source(cfg, input_path, days)
    _phase("validated the source", started)
    result = SessionizeResult(
        days=source.days,
        work_dir=str(work_dir),
        rows_read=source.rows_read,
        dropped_by_type=source.dropped,
        quarantined_by_reason=source.bad,
        outside_days=sum(source.valid_by_day.values()) - source.in_days_valid,
        user_salt_source=salt_source,
    )
    # a complete day is never rewritten from input that lacks it (a run on a partial log)
    result.kept_days = kept_complete_days(work_dir, source.days, source.valid_by_day)
    if kept := result.kept_days:
        logger.warning(
            "%s has no events on %d days the work folder holds complete (%s..%s): kept as "
            "they are, not rewritten empty",
            input_path, len(kept), kept[0], kept[-1],
        )  # fmt: skip
    item_table = _quarantine(cfg, work_dir, source, items_path, result)
    all_sessions = _all_sessions(cfg, source, salt).cache()
    try:
        for key, value in rule_counts(all_sessions).items():
            setattr(result, key, value)
        check_accounting(result, source.in_days_valid)
        _phase("built sessions", started)
        conversions = extract_conversions(all_sessions.where("is_kept")).cache()
        frames = _frames(cfg, all_sessions, conversions, source.days, item_table)
        _write_days(work_dir, input_path, source, frames, result, started)
        conversions.unpersist()
    finally:
        all_sessions.unpersist()
    result.seconds = round(time.monotonic() - started, 2)
    _log_done(result)
    return result


def _log_done(result: SessionizeResult) -> None:
    logger.info(
        "sessionized %d days in %.1f s (%.0f rows/s): %d rows, %d valid events, %d sessions, "
        "%d conversions, %d booking pairs; dropped %s, quarantined %s, %d duplicates, "
        "%d short-dwell, %d truncated sessions, %d cut at midnight",
        len(result.days),
        result.seconds,
        result.rows_read / max(result.seconds, 1e-9),
        result.rows_read,
        result.events_valid,
        result.sessions,
        result.conversions,
        result.booking_pairs,
        result.dropped_by_type,
        result.quarantined_by_reason,
        result.duplicates,
        result.short_dwell_dropped,
        result.truncated_sessions,
        result.sessions_cut_at_midnight,
    )


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
