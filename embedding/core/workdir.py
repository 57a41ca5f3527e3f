"""The work folder: the one definition of its layout, which days a run reads, and the tables it
assembles from them.

Layout (written by ``jobs.sessionize``, read by the stages): ``<table>/dt=<day>/*.parquet`` for
each table below, ``_days/<day>.json`` marking a day complete.
Output: Arrow tables of a list of days; retention of old days.
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedding.core.errors import InputError

logger = logging.getLogger(__name__)

DAYS_MARKERS = "_days"
SESSIONS = "sessions"
CONVERSIONS = "conversions"
BOOKING_PAIRS = "booking_pairs"
ITEM_STATS = "item_stats"
ITEMS = "items"


def window_days(end: date, n_days: int) -> list[date]:
    """The ``n_days`` days before ``end`` (exclusive), oldest first."""
    return [end - timedelta(days=n_days - i) for i in range(n_days)]


def day_marker_path(work_dir: Path, day: date | str) -> Path:
    return work_dir / DAYS_MARKERS / f"{day}.json"


def read_marker(work_dir: Path, day: date | str) -> dict | None:
    path = day_marker_path(work_dir, day)
    return json.loads(path.read_text()) if path.is_file() else None


def missing_days(work_dir: Path, days: list[date]) -> list[date]:
    """Days with no completion marker yet (never sessionized, or interrupted)."""
    return [d for d in days if read_marker(work_dir, d) is None]


def table_files(work_dir: Path, table: str, days: list[date]) -> list[Path]:
    """The Parquet files of ``table`` for ``days``, in day order."""
    return [f for day in days for f in sorted((work_dir / table / f"dt={day}").glob("*.parquet"))]


def load_table(
    work_dir: Path, table: str, days: list[date], columns: list[str] | None = None
) -> pa.Table | None:
    """One table over ``days`` (with a ``dt`` column). Partitions written by an older version
    of the job may store a column with another type (e.g. timestamps in ns without a zone):
    they are cast to the newest partition's types, or the day is named for a rebuild."""
    parts = []
    for day in days:
        for file in sorted((work_dir / table / f"dt={day}").glob("*.parquet")):
            part = pq.read_table(file, columns=columns)
            parts.append(part.append_column("dt", pa.array([str(day)] * part.num_rows)))
    if not parts:
        return None
    target = parts[-1].schema
    for i, part in enumerate(parts):
        if part.schema.names == target.names and part.schema != target:
            try:
                parts[i] = part.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                day = part.column("dt")[0].as_py() if part.num_rows else "?"
                raise InputError(
                    f"{work_dir / table}/dt={day}: written with other column types ({exc}); "
                    "sessionize that day again"
                ) from exc
    return pa.concat_tables(parts, promote_options="permissive")


def apply_retention(work_dir: Path, end: date, retention_days: int) -> list[str]:
    """Delete every day partition (all tables) and day marker older than ``end - retention_days``.

    Keyed to the data interval's end, never the wall clock, so reruns delete the same days.
    Returns the days removed, oldest first.
    """
    import shutil

    cutoff = end - timedelta(days=retention_days)
    removed: set[str] = set()
    for partition in sorted(work_dir.glob("*/dt=*")):
        day = partition.name.removeprefix("dt=")
        if day.endswith(".old"):  # a replacement a crash interrupted (jobs.sessionize)
            logger.warning("removing %s, left behind by an interrupted day rewrite", partition)
            shutil.rmtree(partition, ignore_errors=True)
            continue
        try:
            parsed = date.fromisoformat(day)
        except ValueError:
            logger.warning("retention: ignoring %s, not a day partition", partition)
            continue
        if parsed < cutoff:
            marker = day_marker_path(work_dir, day)
            marker.unlink(missing_ok=True)  # incomplete first, then gone
            shutil.rmtree(partition)
            removed.add(day)
    for marker in sorted((work_dir / DAYS_MARKERS).glob("*.json")):
        try:
            parsed = date.fromisoformat(marker.stem)
        except ValueError:
            logger.warning("retention: ignoring %s, not a day marker", marker)
            continue
        if parsed < cutoff:
            marker.unlink()
            removed.add(marker.stem)
    return sorted(removed)
