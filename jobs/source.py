"""A run's source, validated: the click log read, mapped onto the contract and flagged row by
row, the rows counted (dropped, quarantined per reason, valid per day), far-off days
quarantined, and the log refused when it has no rows, too many bad ones or nothing valid on
the run's days.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from embedding.core.config import Config
from embedding.core.errors import InputError
from jobs import columns as C
from jobs.days import outlier_days
from jobs.ingest import (
    flag_rows,
    inspect_input,
    map_columns,
    read_clicks,
)
from jobs.spark import get_spark

logger = logging.getLogger(__name__)


def read_flagged(cfg: Config, input_path: Path, days: list[date] | None) -> DataFrame:
    """Source rows mapped onto the contract, each with its quarantine ``reason`` (or null)."""
    info = inspect_input(input_path, cfg.source)
    if info.unused:
        logger.info(
            "%s has no %s column: unused (%s)",
            input_path,
            ", ".join(info.unused),
            "; ".join(UNUSED_MEANS[c] for c in info.unused if c in UNUSED_MEANS),
        )
    raw = read_clicks(get_spark(cfg.spark), info)
    if days and "dt" in raw.columns and "dt" not in cfg.source.columns.present().values():
        lo, hi = min(days) - timedelta(days=1), max(days) + timedelta(days=1)
        raw = raw.where(F.col("dt").cast("date").between(F.lit(lo), F.lit(hi)))
    ts_max = None
    if days:
        end = datetime.combine(max(days) + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        ts_max = end + timedelta(hours=cfg.ingest.lateness_hours)
    return flag_rows(map_columns(raw, info.source), cfg.ingest, ts_max)


UNUSED_MEANS = {
    "event": "every row is a click",
    "session_id": "sessions are cut at the inactivity gap",
    "user_id": "the session id stands for the user",
    "market": "negatives are drawn from all items",
}


def count_rows(flagged: DataFrame) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """One pass over the source: rows dropped per source event, quarantined per reason, and
    valid per day."""
    kind = (
        F.when(F.col(C.REASON).isNotNull(), "bad")
        .when(F.col(C.EVENT) == C.DROP, "drop")
        .otherwise("valid")
    )
    key = (
        F.when(F.col(C.REASON).isNotNull(), F.col(C.REASON))
        .when(F.col(C.EVENT) == C.DROP, F.col(C.SOURCE_EVENT))
        .otherwise(F.to_date(C.TS).cast("string"))
    )
    counts: dict[str, dict[str, int]] = {"bad": {}, "drop": {}, "valid": {}}
    for row in flagged.groupBy(kind.alias("kind"), key.alias("key")).count().collect():
        counts[row["kind"]][str(row["key"])] = int(row["count"])
    return tuple(dict(sorted(counts[k].items())) for k in ("drop", "bad", "valid"))


@dataclass
class Source:
    """The validated source of a run: flagged rows and their counts, and the run's days."""

    flagged: DataFrame
    dropped: dict[str, int]  # per source event
    bad: dict[str, int]  # quarantined, per reason
    valid_by_day: dict[str, int]
    days: list[str] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return sum(self.dropped.values()) + sum(self.bad.values()) + sum(self.valid_by_day.values())

    @property
    def in_days_valid(self) -> int:
        return sum(self.valid_by_day.get(d, 0) for d in self.days)


def quarantine_outliers(source: Source) -> None:
    """Days far from the rest of the log get their own quarantine reason: they would stretch
    the window and name the version."""
    outliers = outlier_days(source.valid_by_day)
    if not outliers:
        return
    n_out = sum(source.valid_by_day.pop(d) for d in outliers)
    source.bad = dict(sorted({**source.bad, C.TS_OUTLIER: n_out}.items()))
    logger.warning(
        "%d rows on %d days far from the rest of the log (%s..%s) quarantined as %s",
        n_out, len(outliers), outliers[0], outliers[-1], C.TS_OUTLIER,
    )  # fmt: skip
    is_outlier = (
        F.col(C.REASON).isNull()
        & (F.col(C.EVENT) != C.DROP)
        & F.to_date(C.TS).cast("string").isin(outliers)
    )
    source.flagged = source.flagged.withColumn(
        C.REASON, F.when(is_outlier, F.lit(C.TS_OUTLIER)).otherwise(F.col(C.REASON))
    )


def validate_source(cfg: Config, input_path: Path, days: list[date] | None) -> Source:
    """Read, map and flag the source; refuse it when it has no rows, too many bad ones or no
    valid event on the run's days (None: every day of the log).

    Raises:
        InputError: naming the file and the counts.
    """
    flagged = read_flagged(cfg, input_path, days)
    source = Source(flagged, *count_rows(flagged))
    if days is None:
        quarantine_outliers(source)
    if source.rows_read == 0:
        raise InputError(f"{input_path}: the click log has no rows")
    n_bad = sum(source.bad.values())
    item_rows = source.rows_read - sum(source.dropped.values())
    if item_rows and n_bad / item_rows > cfg.ingest.max_bad_share:
        raise InputError(
            f"{input_path}: {n_bad} of {item_rows} item rows ({n_bad / item_rows:.1%}) failed "
            f"validation {source.bad}, above ingest.max_bad_share={cfg.ingest.max_bad_share}"
        )
    if days is None:
        if not source.valid_by_day:
            raise InputError(f"{input_path}: no valid item events ({n_bad} rows quarantined)")
        first = date.fromisoformat(min(source.valid_by_day))
        last = date.fromisoformat(max(source.valid_by_day))
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    source.days = sorted({d.isoformat() for d in days})
    if source.in_days_valid == 0:
        raise InputError(
            f"{input_path}: no valid item events on {source.days[0]}..{source.days[-1]} "
            f"({sum(source.valid_by_day.values())} valid events elsewhere, {n_bad} quarantined)"
        )
    return source
