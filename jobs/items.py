"""Item table (CONTRACTS §1b): read, validate and deduplicate an optional item metadata file.

Input: a Parquet or CSV file or folder with one row per item; ``source.item_columns`` names its
``item_id`` and ``market`` columns, every other column is kept as an attribute (price, type, ...).
Output: the valid items (``item_id``, ``market``, attributes) and the rejected rows, as the source
had them (strings), with a ``reason``: ``missing_item_id``, ``id_too_long`` or
``conflicting_item_rows`` (one item id with rows that disagree: every such row is rejected, so no
row is picked at random). Exact duplicate rows are kept once and counted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from embedding.core.config import Config, ItemColumnMap
from embedding.core.errors import InputError
from jobs import columns as C
from jobs.ingest import as_string, inspect_input, read_clicks

logger = logging.getLogger(__name__)

RESERVED = {C.ITEM_ID, C.MARKET, C.DAY, C.SOURCE_FILE, C.REASON}


@dataclass
class ItemTableResult:
    """What the item table held: rows_read = duplicates + quarantined + items."""

    path: str
    rows_read: int = 0
    duplicates: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    items: int = 0
    attributes: list[str] = field(default_factory=list)
    quarantine_path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def map_items(raw: DataFrame, columns: ItemColumnMap) -> tuple[DataFrame, list[str]]:
    """Canonical ``item_id`` and ``market`` plus the attribute columns (names kept), the source
    file and the raw row; returns the frame and the attribute names."""
    mapped = set(columns.present().values())
    attributes = [c for c in raw.columns if c not in mapped and c not in RESERVED]
    skipped = [c for c in raw.columns if c not in mapped and c in RESERVED - {C.SOURCE_FILE}]
    if skipped:
        logger.warning("item table: columns %s clash with canonical names, left out", skipped)
    source_columns = [c for c in raw.columns if c != C.SOURCE_FILE]
    market = as_string(F.col(columns.market)) if columns.market else F.lit(None).cast("string")
    frame = raw.select(
        as_string(F.col(columns.item_id)).alias(C.ITEM_ID),
        market.alias(C.MARKET),
        *[F.col(f"`{c}`") for c in attributes],
        F.col(C.SOURCE_FILE),
        F.struct(*[F.col(f"`{c}`").cast("string").alias(c) for c in source_columns]).alias("raw"),
    )
    return frame, attributes


def flag_items(items: DataFrame, attributes: list[str], max_id_length: int) -> DataFrame:
    """Distinct item rows (exact duplicates dropped) with their ``reason`` (null: valid)."""
    content = [C.ITEM_ID, C.MARKET, *attributes]
    distinct = items.dropDuplicates(content)
    per_item = Window.partitionBy(C.ITEM_ID)
    reason = (
        F.when(F.col(C.ITEM_ID).isNull(), "missing_item_id")
        .when(F.length(C.ITEM_ID) > max_id_length, "id_too_long")
        .when(F.count("*").over(per_item) > 1, "conflicting_item_rows")
    )
    return distinct.withColumn(C.REASON, reason)


def read_item_table(
    spark: SparkSession, cfg: Config, path: Path
) -> tuple[DataFrame, DataFrame, ItemTableResult]:
    """Valid items, rejected rows and the counts of an item table file or folder.

    Raises:
        InputError: missing/empty file, missing columns, no valid items, too many bad rows.
    """
    columns = cfg.source.item_columns
    info = inspect_input(path, cfg.source, columns.present(), "source.item_columns")
    raw = read_clicks(spark, info)
    mapped, attributes = map_items(raw, columns)
    flagged = flag_items(mapped, attributes, cfg.ingest.max_id_length).cache()
    result = ItemTableResult(path=str(path), attributes=attributes, rows_read=raw.count())
    if result.rows_read == 0:
        raise InputError(f"{path}: the item table has no rows")
    counts = flagged.groupBy(C.REASON).count().collect()
    by_reason = {str(r[C.REASON]): int(r["count"]) for r in counts if r[C.REASON] is not None}
    result.quarantined_by_reason = dict(sorted(by_reason.items()))
    result.items = sum(int(r["count"]) for r in counts if r[C.REASON] is None)
    result.duplicates = result.rows_read - result.items - sum(by_reason.values())
    n_bad = sum(by_reason.values())
    if n_bad / result.rows_read > cfg.ingest.max_bad_share or result.items == 0:
        raise InputError(
            f"{path}: {n_bad} of {result.rows_read} item-table rows failed validation "
            f"{result.quarantined_by_reason} (ingest.max_bad_share={cfg.ingest.max_bad_share})"
        )
    valid = flagged.where(F.col(C.REASON).isNull()).select(
        C.ITEM_ID, C.MARKET, *[F.col(f"`{c}`") for c in attributes]
    )
    rejected = flagged.where(F.col(C.REASON).isNotNull()).select("raw.*", C.REASON, C.SOURCE_FILE)
    return valid, rejected, result
