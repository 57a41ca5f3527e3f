"""The holdout: a window's sessions split into train, validation and test.

Input: the window's sessions (with their ``dt`` day) and booking pairs. Output: ``WindowData``,
whose test part is touched only for the reported figures and the gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.core.config import EvaluateConfig
from embedding.core.errors import InputError

logger = logging.getLogger(__name__)


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
