"""The training window: which days a run reads, and the tables it assembles from them.

Input: the per-day partitions and markers written by ``jobs.sessionize``.
Output: Arrow tables of sessions and booking pairs for a list of days, and the holdout split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.config import EvaluateConfig
from embedding.errors import InputError

DAYS_MARKERS = "_days"


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


def load_table(work_dir: Path, table: str, days: list[date]) -> pa.Table | None:
    """One table over ``days`` (with a ``dt`` column). Partitions written by an older version
    of the job may store a column with another type (e.g. timestamps in ns without a zone):
    they are cast to the newest partition's types, or the day is named for a rebuild."""
    parts = []
    for day in days:
        for file in sorted((work_dir / table / f"dt={day}").glob("*.parquet")):
            part = pq.read_table(file)
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


@dataclass(frozen=True)
class WindowData:
    train_sessions: pa.Table
    test_sessions: pa.Table
    train_pairs: pa.Table
    holdout: str  # how the test set was chosen, for the manifest


def split_holdout(sessions: pa.Table, pairs: pa.Table | None, cfg: EvaluateConfig) -> WindowData:
    """Split sessions into train and test; pairs of test sessions never reach training."""
    if cfg.holdout == "last_day":
        days = sorted(set(sessions.column("dt").to_pylist()))
        if len(days) < 2:
            raise InputError(
                f"the training window holds sessions of {len(days)} day(s) only; the last_day "
                "holdout needs two or more (use --set evaluate.holdout=last_fraction)"
            )
        is_test = pc.equal(sessions.column("dt"), days[-1])
        holdout = f"last_day ({days[-1]})"
    else:
        order = np.lexsort(
            (
                sessions.column("session_id").to_numpy(zero_copy_only=False),
                sessions.column("start_ts").cast(pa.int64()).to_numpy(),
            )
        )
        n_test = max(1, round(len(order) * cfg.holdout_fraction))
        mask = np.zeros(len(order), dtype=bool)
        mask[order[len(order) - n_test :]] = True
        is_test = pa.array(mask)
        holdout = f"last_fraction ({cfg.holdout_fraction:.0%} of sessions by start time)"
    test = sessions.filter(is_test)
    train = sessions.filter(pc.invert(is_test))
    if train.num_rows == 0 or test.num_rows == 0:
        raise InputError(
            f"holdout {holdout}: {train.num_rows} train / {test.num_rows} test sessions"
        )
    if pairs is None or pairs.num_rows == 0:
        train_pairs = pa.table(
            {
                "context_item": pa.array([], pa.string()),
                "booked_item": pa.array([], pa.string()),
                "market": pa.array([], pa.string()),
            }
        )
    else:
        in_test = pc.is_in(pairs.column("session_id"), value_set=test.column("session_id"))
        train_pairs = pairs.filter(pc.invert(in_test))
    return WindowData(train, test, train_pairs, holdout)


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
        if date.fromisoformat(day) < cutoff:
            marker = day_marker_path(work_dir, day)
            marker.unlink(missing_ok=True)  # incomplete first, then gone
            shutil.rmtree(partition)
            removed.add(day)
    for marker in sorted((work_dir / DAYS_MARKERS).glob("*.json")):
        if date.fromisoformat(marker.stem) < cutoff:
            marker.unlink()
            removed.add(marker.stem)
    return sorted(removed)
