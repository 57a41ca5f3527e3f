"""Content hashes: two outputs are equal when their rows are, whatever the file bytes.

CONTRACTS §2 compares runs by the content of their data files (rows sorted, then hashed), never
by file bytes or the manifest, which carries timestamps. File checksums (sha256 of bytes) guard a
published version against corruption.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedding import PROJECT_ROOT


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha256(entry: object) -> str | None:
    """The hex digest of a manifest ``files`` entry in any of the forms met: ``"<hex>"`` (what
    the publisher writes), ``"sha256:<hex>"`` or ``{"sha256": "<hex>"}``; None for anything
    else."""
    if isinstance(entry, Mapping):
        entry = entry.get("sha256")
    if not isinstance(entry, str) or not entry:
        return None
    return entry.removeprefix("sha256:").lower()


def _canonical_type(dtype: pa.DataType) -> pa.DataType:
    """One spelling per logical type, whoever wrote the file (Spark, DuckDB, pyarrow)."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return pa.list_(pa.field("item", _canonical_type(dtype.value_type)))
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_timestamp(dtype):
        return pa.timestamp("us", tz="UTC" if dtype.tz else None)
    return dtype


def canonical_table(tables: Sequence[pa.Table], sort_keys: Sequence[str]) -> pa.Table | None:
    """Concatenate, normalise the schema (names sorted, no metadata), sort by ``sort_keys``."""
    non_empty = [t for t in tables if t.num_rows]
    if not non_empty:
        return None
    fields = sorted(non_empty[0].schema, key=lambda f: f.name)
    schema = pa.schema([pa.field(f.name, _canonical_type(f.type)) for f in fields])
    table = pa.concat_tables([t.select(schema.names).cast(schema) for t in non_empty])
    return table.sort_by([(key, "ascending") for key in sort_keys]).combine_chunks()


def table_content_hash(tables: Sequence[pa.Table], sort_keys: Sequence[str]) -> str:
    """sha256 over the rows of ``tables`` sorted by ``sort_keys`` (Arrow IPC of a canonical
    schema: column order, metadata and nullability flags do not count)."""
    digest = hashlib.sha256()
    table = canonical_table(tables, sort_keys)
    if table is None:
        return digest.hexdigest()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)
    digest.update(sink.getvalue())
    return digest.hexdigest()


def parquet_content_hash(path: Path, sort_keys: Sequence[str]) -> str:
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    return table_content_hash([pq.read_table(f) for f in files], sort_keys)


SOURCE_PACKAGES = ("embedding", "jobs")


def source_hash(packages: Iterable[str] = SOURCE_PACKAGES) -> str:
    """sha256 over the package's source files (path and bytes), so code changes new ids."""
    digest = hashlib.sha256()
    for package in packages:
        for file in sorted((PROJECT_ROOT / package).rglob("*.py")):
            digest.update(str(file.relative_to(PROJECT_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
