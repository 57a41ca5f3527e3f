"""Content hashes: two outputs are equal when their rows are, whatever the file bytes.

CONTRACTS §2 compares runs by the content of their data files (rows sorted, then hashed), never
by file bytes or the manifest, which carries timestamps. File checksums (sha256 of bytes) guard a
published version against corruption.
"""

from __future__ import annotations

import ast
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


# the code a published version's bytes come from: the stages and everything they import
# (found by reading the imports, lazy ones included); developer tools, the CLI, the DAG files,
# the serving layer and tests are outside it, so editing them leaves version ids unchanged
OUTPUT_ROOTS = ("embedding.stages.pipeline", "jobs.sessionize")
SESSIONIZE_ROOTS = ("jobs.sessionize",)  # what a day marker's code hash covers
# imported by the stages but never changing what they write: kill points, the writer lock
NOT_OUTPUT = frozenset({"embedding.core.chaos", "embedding.core.lock"})
_PACKAGES = ("embedding", "jobs")


def source_hash(roots: Iterable[str] = OUTPUT_ROOTS, project_root: Path = PROJECT_ROOT) -> str:
    """sha256 over the source of ``output_modules(roots)`` (path and bytes): the code hash of a
    version id (CONTRACTS §2) and of a day marker."""
    digest = hashlib.sha256()
    for file in output_modules(roots, project_root):
        digest.update(file.relative_to(project_root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def output_modules(roots: Iterable[str], project_root: Path = PROJECT_ROOT) -> list[Path]:
    """The files of ``roots`` and of every project module they import, transitively (packages'
    ``__init__`` included), ``NOT_OUTPUT`` aside; sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_OUTPUT:
            continue
        seen.add(name)
        todo.extend(_imported_modules(name, project_root) - seen)
    return sorted({_module_file(name, project_root) for name in seen} - {None})  # type: ignore[arg-type]


def _module_file(name: str, project_root: Path) -> Path | None:
    path = project_root.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(name: str, project_root: Path) -> set[str]:
    """Project modules (and their parent packages) that module ``name`` imports anywhere."""
    file = _module_file(name, project_root)
    if file is None:
        return set()
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)  # ``from pkg import mod`` may import a module: try both
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for imported in names:
        parts = imported.split(".")
        if parts[0] not in _PACKAGES:
            continue
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if _module_file(prefix, project_root) is not None:
                found.add(prefix)
    return found
