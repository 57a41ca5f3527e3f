"""Ingest: read a click log (Parquet or CSV, file or folder), map it onto the contract, validate.

Input: any source described by ``SourceConfig`` (column and event names mapped by config).
Output: canonical events (``user_id, ts, item_id, event, market, seq, session_id, shown_items``)
plus a quarantine frame of rejected rows with a ``reason``. Rows whose event is mapped to
``drop`` are counted per source event type, never quarantined. Nothing is lost silently.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from embedding.core.config import IngestConfig, SourceConfig
from embedding.core.errors import InputError
from jobs import columns as C

logger = logging.getLogger(__name__)

MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TS = datetime(2100, 1, 1, tzinfo=UTC)  # sanity bound when no interval end is known
DATA_SUFFIXES = {".parquet": "parquet", ".csv": "csv"}


OPTIONAL_COLUMNS = (
    "user_id",
    "event",
    "session_id",
    "market",
    "seq",
    "shown_items",
    "shown_prices",
)


@dataclass(frozen=True)
class InputInfo:
    path: Path
    format: str
    files: list[Path]
    columns: list[str]
    source: SourceConfig  # the config's source with absent optional columns set to None
    unused: tuple[str, ...] = ()  # optional canonical columns the source does not have


def resolve_columns(
    source: SourceConfig, header: list[str]
) -> tuple[SourceConfig, tuple[str, ...]]:
    """The source config with every optional column that is left at its canonical name and
    missing from ``header`` set to None (unused); a renamed mapping must exist (checked later).

    Raises:
        InputError: neither ``user_id`` nor ``session_id`` is left.
    """
    cols = source.columns
    unused = tuple(c for c in OPTIONAL_COLUMNS if getattr(cols, c) == c and c not in header)
    resolved = cols.model_copy(update={c: None for c in unused})
    if resolved.user_id is None and resolved.session_id is None:
        raise InputError(
            "the click log has neither a user_id nor a session_id column; map one under "
            "source.columns (e.g. a mapping file passed with --source)"
        )
    return source.model_copy(update={"columns": resolved}), unused


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def inspect_input(
    path: Path,
    source: SourceConfig,
    columns: dict[str, str] | None = None,
    config_key: str = "source.columns",
) -> InputInfo:
    """Check the input exists, holds data files of one format and has the mapped columns
    (``columns``, canonical -> source name; default: the click log's, ``source.columns``).

    Runs before Spark starts, so bad input fails in a second with a message naming the file.
    Optional click-log columns left at their canonical names and absent from the files are
    unused (``InputInfo.source``, ``InputInfo.unused``).
    """
    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not _is_hidden(p, path)
        )
        if not files:
            raise InputError(f"{path}: no .parquet or .csv files found (empty folder?)")
    formats = {DATA_SUFFIXES.get(p.suffix.lower(), "") for p in files}
    if source.format != "auto":
        fmt = source.format
    elif len(formats) == 1 and "" not in formats:
        fmt = formats.pop()
    else:
        raise InputError(
            f"{path}: cannot tell the format (files end in {sorted(formats)}); "
            "set source.format to parquet or csv"
        )
    resolved, unused = source, ()
    if columns is None:
        resolved, unused = resolve_columns(source, _read_header(files[0], fmt))
        columns = resolved.columns.present()
    missing_by_file: dict[Path, list[str]] = {}
    header: list[str] = []
    for file in files:
        header = _read_header(file, fmt)
        missing = [
            f"'{src}' ({config_key}.{canon})" for canon, src in columns.items() if src not in header
        ]
        if missing:
            missing_by_file[file] = missing
    if missing_by_file:
        file, missing = next(iter(missing_by_file.items()))
        more = f" (and {len(missing_by_file) - 1} more files)" if len(missing_by_file) > 1 else ""
        raise InputError(
            f"{file}: missing column {', '.join(missing)}{more}; map the source's column "
            f"under {config_key} in the config"
        )
    return InputInfo(path=path, format=fmt, files=files, columns=header, source=resolved,
                     unused=unused)  # fmt: skip


def _read_header(file: Path, fmt: str) -> list[str]:
    try:
        if fmt == "parquet":
            return list(pq.read_schema(file).names)
        with file.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{file}: cannot read as {fmt} ({exc})") from exc


def read_clicks(spark: SparkSession, info: InputInfo) -> DataFrame:
    """Read the raw source rows, remembering which file each came from."""
    reader = spark.read
    if info.format == "csv":
        raw = reader.option("header", True).option("inferSchema", False).csv(str(info.path))
    else:
        raw = reader.parquet(str(info.path))
    return raw.withColumn(C.SOURCE_FILE, F.input_file_name())


def _parse_ts(col: Column, dtype: T.DataType, kind: str) -> Column:
    """Source time -> TIMESTAMP (UTC); unparsable values become null (quarantined later)."""
    if kind == "epoch_ms":
        return F.timestamp_millis(col.cast("long"))
    if kind == "epoch_s":
        return F.timestamp_seconds(col.cast("double"))
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return col.cast("timestamp")
    if isinstance(dtype, T.NumericType):
        return F.timestamp_seconds(col.cast("double"))
    as_number = col.cast("double")
    return F.when(as_number.isNotNull(), F.timestamp_seconds(as_number)).otherwise(
        F.to_timestamp(col)
    )


def as_string(col: Column) -> Column:
    trimmed = F.trim(col.cast("string"))
    return F.when(trimmed == "", None).otherwise(trimmed)


def map_columns(raw: DataFrame, source: SourceConfig) -> DataFrame:
    """Rename and type the source columns; adds the mapped event (null = unmapped)."""
    cols = source.columns
    dtypes = dict((f.name, f.dataType) for f in raw.schema.fields)
    event_map = F.create_map(*[F.lit(x) for kv in source.events.items() for x in kv])
    # no event column: every row is a click; no user id: the source's session stands for it
    source_event = as_string(F.col(cols.event)) if cols.event else F.lit(C.CLICK)
    event = event_map[source_event] if cols.event else F.lit(C.CLICK)
    user = cols.user_id or cols.session_id
    mapped = [
        as_string(F.col(user)).alias(C.USER_ID),
        _parse_ts(F.col(cols.ts), dtypes[cols.ts], source.ts_kind).alias(C.TS),
        as_string(F.col(cols.item_id)).alias(C.ITEM_ID),
        source_event.alias(C.SOURCE_EVENT),
        event.alias(C.EVENT),
        (as_string(F.col(cols.market)) if cols.market else F.lit(None).cast("string")).alias(
            C.MARKET
        ),
        (F.col(cols.seq).cast("long") if cols.seq else F.lit(None).cast("long")).alias(C.SEQ),
        (
            (F.col(cols.seq).isNotNull() & F.col(cols.seq).cast("long").isNull())
            if cols.seq
            else F.lit(False)
        ).alias("_bad_seq"),
        (
            as_string(F.col(cols.session_id)) if cols.session_id else F.lit(None).cast("string")
        ).alias(C.SOURCE_SESSION_ID),
        _shown_list(raw, source.columns.shown_items, source.list_separator).alias(C.SHOWN_ITEMS),
        _shown_list(raw, source.columns.shown_prices, source.list_separator)
        .cast("array<double>")
        .alias(C.SHOWN_PRICES),
        F.col(C.SOURCE_FILE),
        F.struct(
            *[F.col(c).cast("string").alias(c) for c in sorted(set(cols.present().values()))]
        ).alias("raw"),
    ]
    return raw.select(*mapped)


def _shown_list(raw: DataFrame, name: str | None, sep: str) -> Column:
    """A list column given as an array or as one joined string (trivago: 'a|b|c')."""
    if not name:
        return F.lit(None).cast("array<string>")
    if isinstance(raw.schema[name].dataType, T.ArrayType):
        return F.col(name).cast("array<string>")
    pattern = "".join(ch if ch.isalnum() else f"\\{ch}" for ch in sep)
    return F.when(F.col(name).isNull(), None).otherwise(
        F.split(F.col(name).cast("string"), pattern)
    )


def quarantine_reason(ingest: IngestConfig, ts_max: datetime | None) -> Column:
    """First failed check of a mapped row, or null for a valid row (drop rows are never bad)."""
    too_long = (F.length(C.USER_ID) > ingest.max_id_length) | (
        F.length(C.ITEM_ID) > ingest.max_id_length
    )
    late = F.col(C.TS) >= F.lit(ts_max or MAX_TS)
    return (
        F.when(F.col(C.SOURCE_EVENT).isNull(), "missing_event")
        .when(F.col(C.EVENT).isNull(), "unknown_event")
        .when(F.col(C.EVENT) == C.DROP, None)
        .when(F.col(C.USER_ID).isNull(), "missing_user_id")
        .when(F.col(C.ITEM_ID).isNull(), "missing_item_id")
        .when(F.col(C.TS).isNull(), "bad_ts")
        .when((F.col(C.TS) < F.lit(MIN_TS)) | late, "ts_out_of_range")
        .when(too_long, "id_too_long")
        .when(F.col("_bad_seq"), "wrong_type_seq")
    )


def flag_rows(mapped: DataFrame, ingest: IngestConfig, ts_max: datetime | None = None) -> DataFrame:
    """Mapped rows with their quarantine ``reason`` (null: valid, or mapped to drop)."""
    return mapped.withColumn(C.REASON, quarantine_reason(ingest, ts_max))


def quarantined_rows(flagged: DataFrame) -> DataFrame:
    """Rejected rows as the source had them (as strings), with the reason and source file."""
    return flagged.where(F.col(C.REASON).isNotNull()).select("raw.*", C.REASON, C.SOURCE_FILE)


def valid_events(flagged: DataFrame) -> DataFrame:
    """Valid item events in canonical columns, plus their UTC day ``dt``."""
    return (
        flagged.where(F.col(C.REASON).isNull() & (F.col(C.EVENT) != C.DROP))
        .drop(C.REASON, "raw", "_bad_seq")
        .withColumn(C.DAY, F.to_date(C.TS).cast("string"))  # yyyy-MM-dd in the session's UTC
    )
