"""DuckDB re-implementation of ``jobs.sessionize``: the same-run reference of ``bench.bench_data``.

Input: a Parquet click log as ``embedding.devtools.generate`` writes it, read with a config like
``conf/default.yaml`` (canonical or renamed columns, any event map; no source session id, seq or
shown items, timestamps stored as Parquet timestamps). Output: what ``run_sessionize(cfg, input,
work_dir)`` writes with ``days=None``, table for table: ``<table>/dt=D/part-NNNNN.parquet`` for
sessions, conversions, booking_pairs and item_stats (``items`` stays an empty partition), the day
markers ``_days/D.json`` (written by the Spark job's own ``commit_day``, so counts and content
hashes are computed the same way) and, when rows were rejected, ``quarantine/<first>_<last>/``.
The rules are the Spark job's, including its floating-point seconds (``cast(ts as double)``) for
the gap and dwell tests. Where Spark leaves a tie to chance, this picks one outcome:

- events sharing (user, ts, seq, item) are ordered by event, then market (nulls first) in every
  step: the order Spark's ``sort_array`` gives a session's events, while its windows (session
  cuts, short dwell) leave such ties in whatever order the shuffle delivered them;
- a booking pair's market is that of the session's first booking of the item (Spark's
  ``dropDuplicates`` keeps any one).

Check it against Spark on a generated log (exit status 1 when a table differs)::

    python -m bench.duckdb_sessionize [--events 20000] [--with-bad-rows] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedding import PROJECT_ROOT
from embedding.core.checksum import canonical_table, table_content_hash
from embedding.core.config import Config, load_config
from embedding.core.errors import InputError
from embedding.core.workdir import BOOKING_PAIRS, CONVERSIONS, ITEM_STATS, SESSIONS
from jobs import columns as C
from jobs.days import commit_day, day_partition
from jobs.ingest import MAX_TS, MIN_TS, inspect_input
from jobs.sessionize import SessionizeResult
from jobs.sessions import TABLES
from jobs.user_hash import hmac_pads, resolve_salt

logger = logging.getLogger("bench.duckdb_sessionize")

SOURCE_FILE_COL = "__source_file"
EVENT_ORDER = "ts, item_id, event, market NULLS FIRST"  # Spark: (ts, coalesce(seq, 0), item_id)
DEFAULT_CONF = PROJECT_ROOT / "conf" / "default.yaml"
CHECK_OVERRIDES = ["spark.driver_memory=6g"]


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ts_lit(moment: datetime.datetime) -> str:
    return f"TIMESTAMPTZ '{moment.astimezone(datetime.UTC).isoformat(sep=' ')}'"


def _seconds(column: str) -> str:
    """Spark's ``cast(ts as double)``: microseconds as a double, divided by 1e6."""
    return f"(epoch_us({column})::DOUBLE / 1e6)"


def _string(column: str) -> str:
    """Spark's ``_as_string``: cast, trim spaces, empty -> null."""
    return f"NULLIF(trim(CAST({column} AS VARCHAR), ' '), '')"


def _check_supported(cfg: Config, files: Sequence[Path], fmt: str) -> pa.Schema:
    cols = cfg.source.columns
    unsupported = [
        f"source.columns.{name}"
        for name in ("session_id", "seq", "shown_items", "shown_prices")
        if getattr(cols, name)
    ]
    if cfg.source.items_from_shown:
        unsupported.append("source.items_from_shown")
    if fmt != "parquet":
        unsupported.append(f"{fmt} input")
    schema = pq.read_schema(files[0])
    if not pa.types.is_timestamp(schema.field(cols.ts).type) or cfg.source.ts_kind not in (
        "auto",
        "timestamp",
    ):
        unsupported.append(f"ts stored as {schema.field(cols.ts).type} ({cfg.source.ts_kind})")
    if unsupported:
        raise NotImplementedError(
            "the DuckDB reference covers the generated-log case only; not supported: "
            + ", ".join(unsupported)
        )
    return schema


def _flagged_sql(cfg: Config, files: Sequence[Path], schema: pa.Schema) -> str:
    """Mapped rows with their quarantine reason (``jobs.ingest.map_columns`` + ``split_valid``,
    ts_max = 2100-01-01 as when no days are given) plus the raw columns as strings."""
    cols = cfg.source.columns
    present = sorted(set(cols.present().values()))
    raw = []
    for name in present:
        value = _ident(name)
        if pa.types.is_timestamp(schema.field(name).type):  # Spark prints timestamps in UTC
            value = f"timezone('UTC', {value})"
        raw.append(f"CAST({value} AS VARCHAR) AS {_ident('__raw_' + name)}")
    events = " ".join(
        f"WHEN {_lit(src)} THEN {_lit(dest)}" for src, dest in cfg.source.events.items()
    )
    market = _string(_ident(cols.market)) if cols.market else "NULL::VARCHAR"
    ts_type = schema.field(cols.ts).type
    ts = _ident(cols.ts) if ts_type.tz else f"timezone('UTC', {_ident(cols.ts)})"
    max_len = cfg.ingest.max_id_length
    file_list = "[" + ", ".join(_lit(str(f)) for f in files) + "]"
    return f"""
        WITH src AS (
            SELECT
                {_string(_ident(cols.user_id))} AS user_id,
                CAST({ts} AS TIMESTAMPTZ) AS ts,
                {_string(_ident(cols.item_id))} AS item_id,
                {_string(_ident(cols.event))} AS source_event,
                {market} AS market,
                {", ".join(raw)},
                {SOURCE_FILE_COL}
            FROM read_parquet({file_list}, filename={_lit(SOURCE_FILE_COL)},
                              hive_partitioning = false)
        ), mapped AS (
            SELECT *, CASE source_event {events} END AS event FROM src
        )
        SELECT *, CASE
            WHEN source_event IS NULL THEN 'missing_event'
            WHEN event IS NULL THEN 'unknown_event'
            WHEN event = '{C.DROP}' THEN NULL
            WHEN user_id IS NULL THEN 'missing_user_id'
            WHEN item_id IS NULL THEN 'missing_item_id'
            WHEN ts IS NULL THEN 'bad_ts'
            WHEN ts < {_ts_lit(MIN_TS)} OR ts >= {_ts_lit(MAX_TS)} THEN 'ts_out_of_range'
            WHEN length(user_id) > {max_len} OR length(item_id) > {max_len} THEN 'id_too_long'
        END AS reason
        FROM mapped
    """


def _sessionize_sql(gap_s: float, min_dwell_s: float | None) -> str:
    """Events after the short-dwell rule, with their session (user, dt, n) and midnight flag.

    One window pass over each user's events gives the previous and next event; the next event is
    in the same session when it follows within the gap on the same day, which is what Spark's
    ``lead(ts)`` over the session sees. A second pass numbers the sessions within user and day.
    """
    now, prev, nxt = _seconds("ts"), _seconds("prev_ts"), _seconds("next_ts")
    if min_dwell_s:
        short = (
            f"next_ts IS NOT NULL AND {nxt} - {now} <= {gap_s!r} AND next_dt = dt "
            f"AND {nxt} - {now} < {float(min_dwell_s)!r} AND event <> '{C.BOOK}'"
        )
    else:
        short = "false"
    return f"""
        WITH neighbours AS (
            SELECT *,
                lag(ts) OVER w AS prev_ts, lag(dt) OVER w AS prev_dt,
                lead(ts) OVER w AS next_ts, lead(dt) OVER w AS next_dt
            FROM events
            WINDOW w AS (PARTITION BY user_id ORDER BY {EVENT_ORDER})
        ), flagged AS (
            SELECT user_id, ts, item_id, event, market, dt,
                prev_ts IS NOT NULL AND {now} - {prev} <= {gap_s!r} AS continues,
                (NOT continues) OR prev_dt <> dt AS is_start,
                continues AND prev_dt <> dt AS midnight,
                {short} AS is_short
            FROM neighbours
        ), numbered AS (
            SELECT *, sum(is_start::INTEGER) OVER (
                PARTITION BY user_id, dt ORDER BY {EVENT_ORDER}
                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS n
            FROM flagged
        )
        SELECT user_id, dt, n, ts, item_id, event, market, midnight
        FROM numbered WHERE NOT is_short
    """


def _sessions_sql(collapse_repeats: bool, max_length: int, min_distinct: int) -> str:
    """One row per session (kept or not), as ``jobs.sessionize.build_sessions``.

    ``evs`` is sorted like Spark's ``sort_array`` of (ts, item, event, market): ``has_market``
    puts a null market first, as Spark does (DuckDB sorts a null struct field last).
    """
    collapsed = (
        "list_filter(items, lambda x, i: i = 1 OR x <> items[i - 1])"
        if collapse_repeats
        else "items"
    )
    return f"""
        WITH per_session AS (
            SELECT user_id, dt, n,
                list_sort(list({{'ts': ts, 'item_id': item_id, 'event': event,
                                 'has_market': market IS NOT NULL, 'market': market}}),
                          'ASC', 'NULLS FIRST') AS evs,
                count(*)::INTEGER AS n_events,
                bool_or(midnight)::INTEGER AS cut_at_midnight
            FROM kept GROUP BY user_id, dt, n
        ), with_items AS (
            SELECT *,
                list_transform(evs, lambda e: e.item_id) AS items,
                list_transform(list_filter(evs, lambda e: e.event = '{C.BOOK}'),
                               lambda e: e.item_id) AS booked
            FROM per_session
        ), with_collapsed AS (
            SELECT *, {collapsed} AS collapsed FROM with_items
        )
        SELECT
            user_id || ':' || CAST(dt AS VARCHAR) || ':' || printf('%04d', n)
                AS session_id,
            user_id, dt, evs, items, n_events, cut_at_midnight,
            evs[1].market AS market,
            evs[1].ts AS start_ts,
            collapsed[1:{max_length}] AS item_ids,
            list_filter(booked, lambda x, i: list_position(booked, x) = i) AS booked_items,
            len(collapsed) AS n_collapsed,
            len(list_distinct(collapsed)) >= {min_distinct} AS is_kept
        FROM with_collapsed
    """


CONVERSIONS_SQL = f"""
    WITH bookings AS (
        SELECT session_id, dt, evs, items,
            unnest(list_filter(range(len(evs)), lambda i: evs[i + 1].event = '{C.BOOK}'))
                AS position
        FROM all_sessions WHERE is_kept
    )
    SELECT session_id, position::INTEGER AS position,
        evs[position + 1].item_id AS booked_item,
        list_filter(list_reverse(items[1:position]), lambda x, i:
            list_position(list_reverse(items[1:position]), x) = i) AS context_items,
        NULL::VARCHAR[] AS shown_items,
        evs[position + 1].market AS market,
        evs[position + 1].ts AS ts,
        dt
    FROM bookings
"""

BOOKING_PAIRS_SQL = """
    SELECT session_id, context_item, booked_item, arg_min(market, position) AS market, dt
    FROM (
        SELECT session_id, unnest(context_items) AS context_item, booked_item, market,
            position, dt
        FROM conversions
    )
    WHERE context_item <> booked_item
    GROUP BY session_id, context_item, booked_item, dt
"""

ITEM_STATS_SQL = f"""
    WITH per_market AS (
        SELECT dt, item_id, market, count(*) AS n_events,
            count_if(event = '{C.BOOK}') AS n_bookings,
            min(ts) AS first_seen, max(ts) AS last_seen
        FROM kept GROUP BY dt, item_id, market
    ), top_market AS (
        SELECT dt, item_id, market FROM per_market
        QUALIFY row_number() OVER (
            PARTITION BY dt, item_id ORDER BY n_events DESC, market DESC NULLS LAST) = 1
    ), totals AS (
        SELECT dt, item_id, sum(n_events)::BIGINT AS n_events,
            sum(n_bookings)::BIGINT AS n_bookings,
            min(first_seen) AS first_seen, max(last_seen) AS last_seen
        FROM per_market GROUP BY dt, item_id
    ), item_sessions AS (
        SELECT dt, item_id, count(*)::BIGINT AS n_sessions
        FROM (SELECT DISTINCT dt, item_id, user_id, n FROM kept)
        GROUP BY dt, item_id
    )
    SELECT item_id, top_market.market, n_events, n_bookings, first_seen, last_seen,
        n_sessions, dt
    FROM totals JOIN top_market USING (dt, item_id) JOIN item_sessions USING (dt, item_id)
"""

OUTPUT_COLUMNS = {
    SESSIONS: "session_id, user_id, market, start_ts, item_ids, booked_items, n_events, dt",
    CONVERSIONS: "*",
    BOOKING_PAIRS: "*",
    ITEM_STATS: "*",
}
OUTPUT_SOURCES = {
    SESSIONS: "all_sessions WHERE is_kept",
    CONVERSIONS: "conversions",
    BOOKING_PAIRS: f"({BOOKING_PAIRS_SQL})",
    ITEM_STATS: f"({ITEM_STATS_SQL})",
}

RULE_COUNTS_SQL = """
    SELECT
        count(*) FILTER (WHERE is_kept) AS sessions,
        count(*) FILTER (WHERE NOT is_kept) AS short_sessions,
        coalesce(sum(n_events) FILTER (WHERE NOT is_kept), 0) AS short_session_events,
        coalesce(sum(n_events) FILTER (WHERE is_kept), 0) AS session_events,
        coalesce(sum(len(item_ids)) FILTER (WHERE is_kept), 0) AS session_items,
        coalesce(sum(n_events - n_collapsed) FILTER (WHERE is_kept), 0) AS collapsed_repeats,
        count(*) FILTER (WHERE is_kept AND n_collapsed > len(item_ids)) AS truncated_sessions,
        coalesce(sum(n_collapsed - len(item_ids)) FILTER (WHERE is_kept), 0)
            AS truncated_events,
        coalesce(sum(cut_at_midnight) FILTER (WHERE is_kept), 0) AS sessions_cut_at_midnight
    FROM all_sessions
"""


def run_duckdb_sessionize(
    cfg: Config, input_path: Path, out_dir: Path, threads: int | None = None
) -> dict:
    """Sessionize every day of the click log at ``input_path`` into ``out_dir`` with DuckDB.

    Args:
        threads: DuckDB worker threads (None: DuckDB's default, one per CPU).

    Returns:
        ``SessionizeResult.to_dict()``: the Spark job's counts, computed the same way.

    Raises:
        InputError: as ``run_sessionize`` (empty log, too many bad rows, no valid events).
        NotImplementedError: a source feature the generated log does not have.
    """
    import duckdb

    started = time.monotonic()
    info = inspect_input(input_path, cfg.source)
    # optional columns at their canonical names that the log lacks are unused, as in Spark
    cfg = cfg.model_copy(update={"source": info.source})
    schema = _check_supported(cfg, info.files, info.format)
    rules = cfg.sessionize
    steps: list[tuple[str, float]] = []

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        steps.append((name, now - since))
        return now

    (out_dir / ".staging").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="duckdb-tmp-", dir=out_dir / ".staging"))
    try:
        with duckdb.connect(config={"threads": threads} if threads else {}) as con:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"SET temp_directory = {_lit(str(scratch))}")
            if rules.hash_user_ids:  # the same HMAC-SHA256 and salt as the Spark job
                salt, salt_source = resolve_salt(rules.salt_env, out_dir)
                ipad, opad = hmac_pads(salt)
                con.execute("SET VARIABLE ipad = $k", {"k": ipad})
                con.execute("SET VARIABLE opad = $k", {"k": opad})
            con.execute(f"CREATE TEMP VIEW flagged AS {_flagged_sql(cfg, info.files, schema)}")
            t = time.monotonic()
            rows = con.execute(
                f"""SELECT reason, CASE WHEN reason IS NULL AND event = '{C.DROP}'
                        THEN source_event END AS dropped, count(*)
                    FROM flagged GROUP BY ALL"""
            ).fetchall()
            rows_read = sum(r[2] for r in rows)
            if rows_read == 0:
                raise InputError(f"{input_path}: the click log has no rows")
            dropped = {str(r[1]): r[2] for r in rows if r[0] is None and r[1] is not None}
            bad = {str(r[0]): r[2] for r in rows if r[0] is not None}
            dropped = dict(sorted(dropped.items()))
            bad = dict(sorted(bad.items()))
            n_bad = sum(bad.values())
            n_valid = sum(r[2] for r in rows if r[0] is None and r[1] is None)
            item_rows = rows_read - sum(dropped.values())
            if item_rows and n_bad / item_rows > cfg.ingest.max_bad_share:
                raise InputError(
                    f"{input_path}: {n_bad} of {item_rows} item rows ({n_bad / item_rows:.1%}) "
                    f"failed validation {bad}, above ingest.max_bad_share="
                    f"{cfg.ingest.max_bad_share}"
                )
            t = step("validate", t)
            user = (
                "substr(sha256(getvariable('opad') || "
                "unhex(sha256(getvariable('ipad') || encode(user_id)))), 1, 16)"
            )
            con.execute(
                f"""CREATE TEMP TABLE events AS
                SELECT {user if rules.hash_user_ids else "user_id"} AS user_id,
                    ts, item_id, event, market,
                    CAST(timezone('UTC', ts) AS DATE) AS dt
                FROM (SELECT DISTINCT user_id, ts, item_id, event, market FROM flagged
                      WHERE reason IS NULL AND event <> '{C.DROP}')"""
            )
            n_unique, first, last = con.execute(
                "SELECT count(*), min(dt), max(dt) FROM events"
            ).fetchone()
            if n_unique == 0:
                raise InputError(f"{input_path}: no valid item events ({n_bad} rows quarantined)")
            t = step("dedup", t)
            days = [
                (first + datetime.timedelta(days=i)).isoformat()
                for i in range((last - first).days + 1)
            ]
            result = SessionizeResult(
                days=days,
                work_dir=str(out_dir),
                rows_read=rows_read,
                dropped_by_type=dropped,
                quarantined_by_reason=bad,
                duplicates=n_valid - n_unique,
                events_valid=n_unique,
            )
            if rules.hash_user_ids:
                result.user_salt_source = salt_source
            staging = out_dir / ".staging" / f"{days[0]}_{days[-1]}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            if n_bad:
                qpath = out_dir / "quarantine" / f"{days[0]}_{days[-1]}"
                shutil.rmtree(qpath, ignore_errors=True)
                qpath.mkdir(parents=True)
                raw = ", ".join(
                    f"{_ident('__raw_' + name)} AS {_ident(name)}"
                    for name in sorted(set(cfg.source.columns.present().values()))
                )
                con.execute(
                    f"""COPY (SELECT {raw}, reason AS {C.REASON},
                            'file://' || {SOURCE_FILE_COL} AS {C.SOURCE_FILE}
                        FROM flagged WHERE reason IS NOT NULL)
                    TO {_lit(str(qpath / "part-00000.parquet"))} (FORMAT parquet)"""
                )
                result.quarantine_path = str(qpath)
                logger.warning("quarantined %d rows %s -> %s", n_bad, bad, qpath)
            gap_s = float(rules.gap_minutes) * 60
            con.execute(f"CREATE TEMP TABLE kept AS {_sessionize_sql(gap_s, rules.min_dwell_s)}")
            n_kept = con.execute("SELECT count(*) FROM kept").fetchone()[0]
            result.short_dwell_dropped = n_unique - n_kept
            t = step("sessionize", t)
            con.execute(
                "CREATE TEMP TABLE all_sessions AS "
                + _sessions_sql(
                    rules.collapse_repeats, rules.max_session_length, rules.min_distinct_items
                )
            )
            counts = con.execute(RULE_COUNTS_SQL).fetchone()
            for key, value in zip([d[0] for d in con.description], counts, strict=True):
                setattr(result, key, int(value))
            con.execute(f"CREATE TEMP TABLE conversions AS {CONVERSIONS_SQL}")
            t = step("sessions", t)
            for table, source in OUTPUT_SOURCES.items():
                order = ", ".join(TABLES[table])
                con.execute(
                    f"""COPY (SELECT {OUTPUT_COLUMNS[table]} FROM {source} ORDER BY dt, {order})
                    TO {_lit(str(staging / table))} (FORMAT parquet, PARTITION_BY (dt))"""
                )
            t = step("write", t)
        for day in days:
            stats = commit_day(out_dir, staging, day, str(input_path))
            result.conversions += stats[f"n_{CONVERSIONS}"]
            result.booking_pairs += stats[f"n_{BOOKING_PAIRS}"]
        shutil.rmtree(staging, ignore_errors=True)
        step("commit", t)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = round(time.monotonic() - started, 2)
    logger.info(
        "duckdb sessionized %d days in %.1f s (%s): %d rows, %d valid events, %d sessions, "
        "%d conversions, %d booking pairs; quarantined %s, %d duplicates, %d short-dwell",
        len(days),
        result.seconds,
        ", ".join(f"{name} {s:.1f}" for name, s in steps),
        rows_read,
        result.events_valid,
        result.sessions,
        result.conversions,
        result.booking_pairs,
        bad,
        result.duplicates,
        result.short_dwell_dropped,
    )
    return result.to_dict()


# ---------------------------------------------------------------------------------------------
# Comparing two work dirs


@dataclass(frozen=True)
class TableCheck:
    """One table partition (or quarantine folder) of two runs, compared by content hash."""

    table: str
    day: str
    rows_a: int
    rows_b: int
    hash_a: str
    hash_b: str
    detail: str = ""

    @property
    def equal(self) -> bool:
        return self.hash_a == self.hash_b


def _read_parts(folder: Path) -> list[pa.Table]:
    return [pq.read_table(f) for f in sorted(folder.glob("*.parquet"))]


def _describe_difference(a: list[pa.Table], b: list[pa.Table], keys: Sequence[str]) -> str:
    """Schemas if they differ, else a few rows found on one side only."""
    ta, tb = canonical_table(a, keys), canonical_table(b, keys)
    if ta is None or tb is None:
        return f"one side is empty ({'a' if ta is None else 'b'})"
    if ta.schema != tb.schema:
        return f"schemas differ: {ta.schema.to_string()} vs {tb.schema.to_string()}"

    def rows(t: pa.Table) -> set[tuple]:
        return {
            tuple(tuple(v) if isinstance(v, list) else v for v in row.values())
            for row in t.to_pylist()
        }

    ra, rb = rows(ta), rows(tb)
    only_a, only_b = sorted(ra - rb, key=str)[:3], sorted(rb - ra, key=str)[:3]
    return f"columns {ta.schema.names}; only in a: {only_a}; only in b: {only_b}"


def compare_work_dirs(a: Path, b: Path, days: Sequence[str]) -> list[TableCheck]:
    """Content hash (``table_content_hash``) of every table partition of ``days`` and of every
    quarantine folder, in two sessionize work dirs."""
    checks = []
    targets = [(table, day, keys) for table, keys in TABLES.items() for day in days]
    quarantined = {p.name for root in (a, b) for p in (root / "quarantine").glob("*")}
    for name in sorted(quarantined):
        columns = None
        for root in (a, b):
            parts = _read_parts(root / "quarantine" / name)
            if parts:
                columns = sorted(parts[0].schema.names)
        targets.append(("quarantine", name, columns or []))
    for table, day, keys in targets:
        if table == "quarantine":
            folders = [root / "quarantine" / day for root in (a, b)]
        else:
            folders = [day_partition(root, table, day) for root in (a, b)]
        parts_a, parts_b = (_read_parts(folder) for folder in folders)
        hash_a, hash_b = table_content_hash(parts_a, keys), table_content_hash(parts_b, keys)
        detail = "" if hash_a == hash_b else _describe_difference(parts_a, parts_b, keys)
        checks.append(
            TableCheck(
                table=table,
                day=day,
                rows_a=sum(t.num_rows for t in parts_a),
                rows_b=sum(t.num_rows for t in parts_b),
                hash_a=hash_a,
                hash_b=hash_b,
                detail=detail,
            )
        )
    return checks


COUNT_KEYS_IGNORED = ("work_dir", "seconds", "quarantine_path")


def compare_counts(spark: dict, duck: dict) -> dict[str, tuple]:
    """Result counts that differ between the two runs: key -> (spark, duckdb)."""
    return {
        key: (value, duck.get(key))
        for key, value in spark.items()
        if key not in COUNT_KEYS_IGNORED and duck.get(key) != value
    }


# ---------------------------------------------------------------------------------------------
# Standalone check: Spark and DuckDB on the same generated log


def add_bad_rows(log_dir: Path, day: str = "2026-01-03") -> int:
    """Add a file of rows the ingest rules reject, trim or deduplicate to a generated log:
    one row per quarantine reason, padded ids, a blank market and 20 exact duplicates."""
    from embedding.devtools.generate import CLICK_SCHEMA

    part = log_dir / f"dt={day}"
    existing = pq.read_table(part / "part-0.parquet")
    noon = datetime.datetime.fromisoformat(f"{day}T12:00:00.250000+00:00")
    old = datetime.datetime(1999, 12, 31, 23, 0, tzinfo=datetime.UTC)
    late = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    minute = datetime.timedelta(minutes=1)
    rows = [
        (None, noon, "i1", "view", "m01"),  # missing_user_id
        ("uzz0", noon, "i1", None, "m01"),  # missing_event
        ("uzz0", noon, "i1", "  ", "m01"),  # missing_event after trimming
        ("uzz0", noon, "i1", "purchase", "m01"),  # unknown_event
        ("uzz0", noon, " ", "view", "m01"),  # missing_item_id
        ("uzz0", None, "i1", "view", "m01"),  # bad_ts
        ("uzz0", old, "i1", "view", "m01"),  # ts_out_of_range
        ("uzz0", late, "i1", "view", "m01"),  # ts_out_of_range
        ("u" * 300, noon, "i1", "view", "m01"),  # id_too_long
        (" uzz1 ", noon, "izz1", "view", "m01"),  # valid once trimmed
        ("uzz1", noon + 5 * minute, "izz2", "click", "m01"),
        ("uzz1", noon + 10 * minute, "izz3", "book", " m02 "),
        ("uzz2", noon, "izz4", "view", "  "),  # blank market -> null
        ("uzz2", noon + 2 * minute, "izz5", "view", None),
        ("uzz2", noon + 3 * minute, "izz4", "book", "m03"),
    ]
    extra = pa.Table.from_pylist(
        [dict(zip(CLICK_SCHEMA.names, row, strict=True)) for row in rows], schema=CLICK_SCHEMA
    )
    duplicates = existing.slice(100, 20)
    pq.write_table(pa.concat_tables([extra, duplicates]), part / "part-1.parquet")
    return extra.num_rows + duplicates.num_rows


def start_spark(cfg: Config) -> object:
    """Start the shared SparkSession now, so ``cfg.spark.driver_memory`` applies."""
    from jobs.spark import get_spark

    logging.getLogger("py4j").setLevel(logging.WARNING)
    return get_spark(cfg.spark)


def print_checks(checks: Sequence[TableCheck]) -> None:
    header = f"{'table':<14} {'day':<22} {'rows spark':>11} {'rows duckdb':>12} {'equal':>6}"
    print(header)
    print("-" * len(header))
    for c in checks:
        print(f"{c.table:<14} {c.day:<22} {c.rows_a:>11,} {c.rows_b:>12,} {c.equal!s:>6}")
        if c.detail:
            print(f"    {c.detail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.duckdb_sessionize",
        description="check the DuckDB reference against the Spark job on one click log",
    )
    parser.add_argument("--events", type=int, default=20_000, help="events to generate")
    parser.add_argument("--input", type=Path, default=None, help="an existing log instead")
    parser.add_argument("--with-bad-rows", action="store_true", help="add rejected rows")
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs here")
    parser.add_argument("--conf", type=Path, default=DEFAULT_CONF)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from embedding.devtools.generate import generate_clicklog
    from jobs.sessionize import run_sessionize

    cfg = load_config(args.conf, CHECK_OVERRIDES)
    start_spark(cfg)
    root = args.keep or Path(tempfile.mkdtemp(prefix="duckdb-check-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        log_dir = args.input
        if log_dir is None:
            log_dir = root / "clicks"
            shutil.rmtree(log_dir, ignore_errors=True)
            generate_clicklog(log_dir, events=args.events, days=8, profile="standard", seed=7)
            if args.with_bad_rows:
                logger.info("added %d rejected or duplicate rows", add_bad_rows(log_dir))
        log_dir = log_dir.resolve()
        spark_dir, duck_dir = root / "spark", root / "duckdb"
        for folder in (spark_dir, duck_dir):
            shutil.rmtree(folder, ignore_errors=True)
        spark_result = run_sessionize(cfg, log_dir, spark_dir).to_dict()
        duck_result = run_duckdb_sessionize(cfg, log_dir, duck_dir)
        checks = compare_work_dirs(spark_dir, duck_dir, spark_result["days"])
        print_checks(checks)
        counts = compare_counts(spark_result, duck_result)
        for key, (spark_value, duck_value) in counts.items():
            print(f"count {key}: spark {spark_value} duckdb {duck_value}")
        equal = all(c.equal for c in checks) and not counts
        print(
            f"{'EQUAL' if equal else 'DIFFERENT'}: {len(checks)} partitions, "
            f"{spark_result['rows_read']:,} rows; spark {spark_result['seconds']:.1f} s, "
            f"duckdb {duck_result['seconds']:.1f} s"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
