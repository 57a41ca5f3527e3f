"""Atomic, durable file writes: a reader (or a killed writer, or a power cut) sees the old file
or the new one, never half.

Each write goes to a hidden temporary file beside the target, is flushed to disk (``fsync``),
then renamed over it (``os.replace``, atomic on POSIX within one file system), and the folder
holding the name is flushed too: a rename lives in its folder's entry, so without that fsync
a power cut can undo it (or keep the name and lose the bytes it pointed at).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_file(path: Path) -> None:
    """Flush one file's bytes to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (the names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder``, and ``folder`` itself."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            fsync_file(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(Path(folder))


def rename_durably(src: Path, dest: Path) -> None:
    """``os.rename(src, dest)``, then flush both folders so the move survives a power cut."""
    os.rename(src, dest)
    fsync_dir(Path(dest).parent)
    if Path(src).parent != Path(dest).parent:
        fsync_dir(Path(src).parent)


def remove_temp_files(folder: Path) -> list[str]:
    """Remove the ``.<name>.<nonce>.tmp`` files a killed writer left in ``folder`` (call it
    only where no other writer can be at work: see ``embedding.core.lock.held_here``)."""
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path`` durably."""
    tmp = temp_path(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(Path(path).parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))
