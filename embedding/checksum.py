"""Content hashes: two outputs are equal when their rows are, whatever the file bytes.

CONTRACTS §2 compares runs by the content of their data files (rows sorted, then hashed), never
by file bytes or the manifest, which carries timestamps. File checksums (sha256 of bytes) guard a
published version against corruption.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def table_content_hash(tables: Sequence[pa.Table], sort_keys: Sequence[str]) -> str:
    """sha256 over the rows of ``tables`` sorted by ``sort_keys`` (columns in name order)."""
    digest = hashlib.sha256()
    non_empty = [t for t in tables if t.num_rows]
    if not non_empty:
        return digest.hexdigest()
    table = pa.concat_tables(non_empty, promote_options="permissive")
    table = table.select(sorted(table.column_names))
    table = table.sort_by([(key, "ascending") for key in sort_keys])
    digest.update(json.dumps(table.column_names).encode())
    for batch in table.to_batches(max_chunksize=50_000):
        digest.update(json.dumps(batch.to_pylist(), default=str).encode())
    return digest.hexdigest()


def parquet_content_hash(path: Path, sort_keys: Sequence[str]) -> str:
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    return table_content_hash([pq.read_table(f) for f in files], sort_keys)
