"""Committing sessionized days into the work folder: staged partitions moved into place one day
at a time, then the day's marker (counts and content hashes) written; which days to keep, and
which are outliers.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from embedding.core.atomic import fsync_dir, fsync_tree, write_text_atomic
from embedding.core.checksum import table_content_hash
from embedding.core.lock import held_here
from embedding.core.workdir import (
    day_marker_path,
    read_marker,
)
from jobs import columns as C
from jobs.sessions import TABLES

logger = logging.getLogger(__name__)


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


# a day under this share of the median day's rows ... (1%, not 0.1%: on a log of 1,500 rows a
# day, 0.1% is under one row, and a day of 3 rows dated years later would stay)
OUTLIER_SHARE = 0.01


OUTLIER_DAYS = 2  # ... and more than this many days from every larger day is an outlier


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
