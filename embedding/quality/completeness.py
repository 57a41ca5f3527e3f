"""Completeness check: is each day of a run's interval as large as the days before it?

Input: the ``_days/<day>.json`` markers the sessionize job writes (``n_events``: the day's
valid source events). Output: a ``Completeness`` verdict per day of the interval. A day whose
volume is below ``min_ratio`` x the median of the ``trailing_days`` days before it is partial
(the upstream export stopped early, a partition went missing); a day with no marker or no
events is missing. Either fails the run before training, with the figures in the message.
With fewer than ``min_history_days`` earlier days to compare with, the check is skipped and
says so. A day above ``max_ratio`` x the median is only a warning (a sale, a duplicated export).

    verdict = check_interval(cfg.completeness, work_dir, date(2026, 1, 8), date(2026, 1, 9))
    verdict.raise_for_failure()
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

from embedding.core.config import CompletenessConfig
from embedding.core.errors import InputError
from embedding.core.workdir import read_marker

logger = logging.getLogger(__name__)


class IncompleteDataError(InputError):
    """A day of the interval is missing or much smaller than the days before it."""


@dataclass(frozen=True)
class DayVolume:
    day: str
    n_events: int | None  # None: no marker, or a marker written before counts were recorded
    reference: float | None  # median events/day of the trailing days (None: too little history)
    history_days: int
    status: str  # ok | partial | missing | high | skipped
    detail: str


@dataclass(frozen=True)
class Completeness:
    days: list[DayVolume] = field(default_factory=list)

    @property
    def failed(self) -> list[DayVolume]:
        return [d for d in self.days if d.status in ("partial", "missing")]

    def to_dict(self) -> dict:
        return {"days": [asdict(d) for d in self.days], "ok": not self.failed}

    def raise_for_failure(self) -> None:
        """Raises IncompleteDataError naming every failing day and its figures."""
        if self.failed:
            raise IncompleteDataError("; ".join(d.detail for d in self.failed))


def day_volumes(work_dir: Path, days: list[date]) -> dict[str, int | None]:
    """``n_events`` from each day's marker (None when absent)."""
    volumes: dict[str, int | None] = {}
    for day in days:
        marker = read_marker(work_dir, day)
        value = None if marker is None else marker.get("n_events")
        volumes[day.isoformat()] = value if isinstance(value, int) else None
    return volumes


def judge_day(
    day: str, n_events: int | None, history: list[int], cfg: CompletenessConfig
) -> DayVolume:
    """The verdict for one day given the event counts of the days before it (pure)."""
    if n_events is None or n_events == 0:
        what = "has no sessionized data" if n_events is None else "has 0 valid events"
        reference = statistics.median(history) if history else None
        return DayVolume(day, n_events, reference, len(history), "missing", f"{day} {what}")
    if len(history) < cfg.min_history_days:
        return DayVolume(
            day,
            n_events,
            None,
            len(history),
            "skipped",
            f"{day}: {n_events:,} events; check skipped, only {len(history)} earlier days with "
            f"counts (needs {cfg.min_history_days})",
        )
    reference = float(statistics.median(history))
    ratio = n_events / reference if reference else float("inf")
    figures = (
        f"{day}: {n_events:,} events = {ratio:.2f} x the median {reference:,.0f} of the "
        f"{len(history)} days before"
    )
    if ratio < cfg.min_ratio:
        return DayVolume(
            day,
            n_events,
            reference,
            len(history),
            "partial",
            f"{figures}, below completeness.min_ratio={cfg.min_ratio}: the day looks partial; "
            "rerun the day once its data is complete",
        )
    if ratio > cfg.max_ratio:
        return DayVolume(
            day, n_events, reference, len(history), "high", f"{figures}, above max_ratio"
        )
    return DayVolume(day, n_events, reference, len(history), "ok", figures)


def check_interval(
    cfg: CompletenessConfig, work_dir: Path, interval_start: date, interval_end: date
) -> Completeness:
    """Judge each day of [interval_start, interval_end) against its trailing days; logs each."""
    days = [interval_start + timedelta(days=i) for i in range((interval_end - interval_start).days)]
    if not cfg.enabled:
        logger.info("completeness check disabled (completeness.enabled=false)")
        return Completeness()
    earliest = interval_start - timedelta(days=cfg.trailing_days)
    lookup = [earliest + timedelta(days=i) for i in range((interval_end - earliest).days)]
    volumes = day_volumes(work_dir, lookup)
    verdicts = []
    for day in days:
        trailing = [day - timedelta(days=i) for i in range(cfg.trailing_days, 0, -1)]
        history = [v for d in trailing if (v := volumes.get(d.isoformat()))]
        verdict = judge_day(day.isoformat(), volumes[day.isoformat()], history, cfg)
        log = logger.error if verdict.status in ("partial", "missing") else logger.info
        if verdict.status == "high":
            log = logger.warning
        log("completeness %s: %s", verdict.status, verdict.detail)
        verdicts.append(verdict)
    return Completeness(verdicts)
