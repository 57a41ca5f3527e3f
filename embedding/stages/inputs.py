"""What the stages read from the work folder for a ``RunPlan``: the window split three ways, the
held-out conversions, item markets, the item table, and the training corpus.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from embedding.core.config import Config
from embedding.core.errors import InputError
from embedding.core.workdir import load_table, table_files
from embedding.quality.holdout import WindowData, split_holdout, split_sessions
from embedding.stages.plan import RunPlan

logger = logging.getLogger(__name__)


def load_window(cfg: Config, plan: RunPlan) -> WindowData:
    days = [date.fromisoformat(d) for d in plan.days]
    work = Path(plan.work_dir)
    sessions = load_table(work, "sessions", days)
    if sessions is None:
        raise InputError(f"no session files for {plan.days[0]}..{plan.days[-1]} under {work}")
    return split_holdout(sessions, load_table(work, "booking_pairs", days), cfg.evaluate)


def test_conversions(plan: RunPlan, test_sessions: pa.Table) -> pa.Table | None:
    """The conversions (bookings) of the held-out sessions."""
    days = [date.fromisoformat(d) for d in plan.days]
    conversions = load_table(Path(plan.work_dir), "conversions", days)
    if conversions is None:
        return None
    test_ids = test_sessions.column("session_id")
    return conversions.filter(pc.is_in(conversions.column("session_id"), value_set=test_ids))


def item_markets(plan: RunPlan) -> dict[str, str | None]:
    """Each item's most frequent market over the window (from the per-day item stats)."""
    stats = load_table(
        Path(plan.work_dir), "item_stats", [date.fromisoformat(d) for d in plan.days]
    )
    if stats is None:
        return {}
    votes: dict[str, Counter] = {}
    for item, market, n in zip(
        stats.column("item_id").to_pylist(),
        stats.column("market").to_pylist(),
        stats.column("n_events").to_pylist(),
        strict=True,
    ):
        votes.setdefault(item, Counter())[market] += n
    return {
        item: max(c.items(), key=lambda kv: (kv[1], kv[0] or ""))[0] for item, c in votes.items()
    }


def load_item_meta(plan: RunPlan):
    """The item table of the window (latest row per item), or None when the source has none."""
    from embedding.quality.cold_start import item_meta

    days = [date.fromisoformat(d) for d in plan.days]
    items = load_table(Path(plan.work_dir), "items", days)
    if items is None or items.num_rows == 0:
        return None
    return item_meta(items)


def training_corpus(cfg: Config, plan: RunPlan):
    """The training sessions of the window as a ``ParquetSessionCorpus``: the split is computed
    from the session keys alone, and validation and test sessions are skipped in the stream."""
    from embedding.train.corpus import ParquetSessionCorpus

    days = [date.fromisoformat(d) for d in plan.days]
    work = Path(plan.work_dir)
    keys = load_table(work, "sessions", days, columns=["session_id", "start_ts", "item_ids"])
    if keys is None:
        raise InputError(f"no session files for {plan.days[0]}..{plan.days[-1]} under {work}")
    split = split_sessions(keys, cfg.evaluate)
    held_out = keys.column("session_id").filter(pa.array(~split.is_train)).to_pylist()
    return ParquetSessionCorpus(
        table_files(work, "sessions", days), set(held_out), cfg.word2vec.booked_oversample
    )
