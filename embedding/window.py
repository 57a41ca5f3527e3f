"""The training window: which days a run reads, and the tables it assembles from them.

Input: the per-day partitions and markers written by ``jobs.sessionize``.
Output: Arrow tables of sessions and booking pairs for a list of days, and the holdout split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.config import EvaluateConfig
from embedding.errors import InputError

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class WindowData:
    """The window split three ways. Training sees only ``train_*``; ``val_*`` chooses (early
    stopping, base or fine-tuned, the sweep); ``test_sessions`` is touched only for the figures
    reported and the gate."""

    train_sessions: pa.Table
    val_sessions: pa.Table
    test_sessions: pa.Table
    train_pairs: pa.Table
    val_pairs: pa.Table
    holdout: str  # how the test set was chosen, for the manifest
    validation: str  # how the validation set was chosen


@dataclass(frozen=True)
class Split:
    """Boolean masks over a sessions table (same row order)."""

    is_val: np.ndarray
    is_test: np.ndarray
    holdout: str
    validation: str

    @property
    def is_train(self) -> np.ndarray:
        return ~(self.is_val | self.is_test)


def _latest(sessions: pa.Table, candidates: np.ndarray, share: float) -> np.ndarray:
    """Mask of the latest ``share`` (at least one) of the ``candidates`` rows by start time,
    ties broken by session id."""
    rows = np.flatnonzero(candidates)
    mask = np.zeros(sessions.num_rows, dtype=bool)
    if share <= 0 or rows.size == 0:
        return mask
    ids = sessions.column("session_id").to_numpy(zero_copy_only=False)[rows]
    starts = sessions.column("start_ts").cast(pa.int64()).to_numpy()[rows]
    order = rows[np.lexsort((ids, starts))]
    n_latest = max(1, round(rows.size * share))
    mask[order[rows.size - n_latest :]] = True
    return mask


def _n_cases(sessions: pa.Table, mask: np.ndarray) -> int | None:
    """Next-item cases (consecutive pairs) of the masked sessions, or None without item_ids."""
    if "item_ids" not in sessions.column_names:
        return None
    lengths = pc.list_value_length(sessions.column("item_ids")).to_numpy(zero_copy_only=False)
    return int(np.maximum(lengths[mask] - 1, 0).sum())


def split_sessions(sessions: pa.Table, cfg: EvaluateConfig) -> Split:
    """Test: the last day (``last_day``) or the latest ``holdout_fraction`` of sessions by start
    (``last_fraction``, for short samples). A ``last_day`` window holding one day only (the
    first run of a new deployment), or whose last day yields fewer than ``min_test_cases``
    next-item cases (a short or quiet last day would leave the gate too few cases to decide),
    falls back to ``last_fraction``, and says so in the holdout description the manifest
    records. Validation: the latest ``val_fraction`` of the rest by start, so that it sits
    between training and test in time. Needs the ``session_id``, ``dt`` and ``start_ts``
    columns, and ``item_ids`` for the case count (without it the count is not checked)."""
    everything = np.ones(sessions.num_rows, dtype=bool)
    days = sorted(set(sessions.column("dt").to_pylist())) if cfg.holdout == "last_day" else []
    fallback = None
    if len(days) >= 2:
        is_test = pc.equal(sessions.column("dt"), days[-1]).to_numpy(zero_copy_only=False)
        holdout = f"last_day ({days[-1]})"
        n_cases = _n_cases(sessions, is_test)
        if n_cases is not None and n_cases < cfg.min_test_cases:
            fallback = (
                f"the last day {days[-1]} yields {n_cases} next-item cases, under "
                f"evaluate.min_test_cases={cfg.min_test_cases}"
            )
    elif cfg.holdout == "last_day":
        fallback = f"last_day needs two days, the window holds {len(days)}"
    if len(days) < 2 or fallback:
        is_test = _latest(sessions, everything, cfg.holdout_fraction)
        holdout = f"last_fraction ({cfg.holdout_fraction:.0%} of sessions by start time)"
        if fallback:
            holdout += f"; {fallback}"
            logger.warning("holdout: %s", holdout)
    is_val = _latest(sessions, ~is_test, cfg.val_fraction)
    validation = (
        f"the latest {cfg.val_fraction:.0%} of the other sessions by start time"
        if cfg.val_fraction
        else "none (evaluate.val_fraction=0)"
    )
    split = Split(is_val, np.asarray(is_test, dtype=bool), holdout, validation)
    n_train, n_test = int(split.is_train.sum()), int(split.is_test.sum())
    if n_train == 0 or n_test == 0:
        raise InputError(
            f"holdout {holdout}: {n_train} train / {int(is_val.sum())} validation / "
            f"{n_test} test sessions"
        )
    return split


def _pairs_of(pairs: pa.Table, sessions: pa.Table, keep: bool = True) -> pa.Table:
    inside = pc.is_in(pairs.column("session_id"), value_set=sessions.column("session_id"))
    return pairs.filter(inside if keep else pc.invert(inside))


def split_holdout(sessions: pa.Table, pairs: pa.Table | None, cfg: EvaluateConfig) -> WindowData:
    """Split sessions into train, validation and test; pairs follow their sessions, so pairs
    of held-out sessions never reach training."""
    split = split_sessions(sessions, cfg)
    train = sessions.filter(pa.array(split.is_train))
    val = sessions.filter(pa.array(split.is_val))
    test = sessions.filter(pa.array(split.is_test))
    held_out = sessions.filter(pa.array(split.is_val | split.is_test))
    if pairs is None or pairs.num_rows == 0:
        pairs = pa.table(
            {
                "session_id": pa.array([], pa.string()),
                "context_item": pa.array([], pa.string()),
                "booked_item": pa.array([], pa.string()),
                "market": pa.array([], pa.string()),
            }
        )
    return WindowData(
        train, val, test, _pairs_of(pairs, held_out, keep=False), _pairs_of(pairs, val),
        split.holdout, split.validation,
    )  # fmt: skip


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
