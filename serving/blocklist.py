"""The blocklist: item ids never returned as neighbours (delisted, withdrawn), reloadable.

Input: the file named by ``ServingConfig.blocklist_path`` (None: no blocklist), either text
(one item id per line; blank lines and lines starting with ``#`` ignored; surrounding
whitespace stripped) or Parquet with an ``item_id`` column (by the ``.parquet`` suffix).
Output: a ``Blocklist``: a frozen set of ids plus where and when it was read.

The file is watched, not trusted: ``BlocklistWatcher.check`` (called by the service's poller,
and by ``POST /admin/reload``) rereads it when its size or mtime changed and swaps the new set
in with one assignment. A file that cannot be read or parsed is refused with the reason logged,
and the previous blocklist stays in force; so does a file that disappears (write an empty file
to clear the list; replace the file by an atomic rename so the service never reads half of it).

It fails closed: until a configured file has been read once (``BlocklistWatcher.ready``), the
item routes answer 503 with ``Retry-After`` and ``/health`` says why (``problem``), since
serving without the list could return a blocked item.

Blocked ids are turned into row numbers once per (blocklist, version) pair
(``Blocklist.rows_for``), so a request pays for a cached array, not for a lookup per blocked id.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding.core.errors import EmbeddingError
from serving.columns import string_item_ids

if TYPE_CHECKING:
    from serving.model import LoadedVersion

logger = logging.getLogger(__name__)

MAX_BLOCKLIST_IDS = 5_000_000  # a file above this is a mistake (e.g. the whole catalogue)
MAX_ID_LENGTH = 256  # as serving.requests: an id longer than this cannot be an item id


class BlocklistError(EmbeddingError):
    """The blocklist file cannot be read or holds something that is not a list of ids."""

    exit_code = 2


@dataclass(frozen=True, eq=False)
class Blocklist:
    """One read of the blocklist file; ``ids`` empty when none is configured."""

    ids: frozenset[str] = frozenset()
    path: Path | None = None
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) of the file when read
    loaded_at: datetime | None = None
    _rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.ids

    def rows_for(self, loaded: LoadedVersion) -> np.ndarray:
        """Sorted row numbers of the blocked ids present in ``loaded`` (cached per version)."""
        rows = self._rows.get(loaded.version)
        if rows is not None:
            return rows
        with self._lock:
            rows = self._rows.get(loaded.version)
            if rows is None:
                found = [loaded.row_of[i] for i in self.ids if i in loaded.row_of]
                rows = np.unique(np.asarray(found, dtype=np.int64))  # (n_blocked_here,)
                rows.setflags(write=False)
                while len(self._rows) >= 2:  # the served version and the one swapping in
                    self._rows.pop(next(iter(self._rows)))
                self._rows[loaded.version] = rows
        return rows


def read_blocklist(path: Path) -> frozenset[str]:
    """The ids in ``path`` (text, or Parquet by suffix).

    Raises:
        BlocklistError: unreadable, not UTF-8, a null or over-long id, or too many ids.
    """
    if path.suffix.lower() == ".parquet":
        ids = _read_parquet_ids(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BlocklistError(f"{path}: not UTF-8 text ({exc})") from exc
        except OSError as exc:
            raise BlocklistError(f"{path}: cannot read the blocklist ({exc})") from exc
        ids = []
        for number, line in enumerate(text.splitlines(), start=1):
            item_id = line.strip()
            if not item_id or item_id.startswith("#"):
                continue
            if len(item_id) > MAX_ID_LENGTH:
                raise BlocklistError(
                    f"{path}, line {number}: {len(item_id)} characters, more than an item id "
                    f"can have ({MAX_ID_LENGTH}); one id per line"
                )
            ids.append(item_id)
    if len(ids) > MAX_BLOCKLIST_IDS:
        raise BlocklistError(
            f"{path}: {len(ids):,} ids, more than the {MAX_BLOCKLIST_IDS:,} a blocklist may hold"
        )
    return frozenset(ids)


def _read_parquet_ids(path: Path) -> list[str]:
    try:
        table = pq.read_table(path, columns=["item_id"])
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise BlocklistError(f"{path}: cannot read an 'item_id' column as Parquet ({exc})") from exc
    try:
        column = string_item_ids(table.column("item_id"), path)
    except ValueError as exc:
        raise BlocklistError(str(exc)) from exc
    return [i for i in column.to_pylist() if i]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class BlocklistWatcher:
    """Holds the current ``Blocklist`` of one service and rereads the file when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.current = Blocklist(path=path)
        self._problem: str | None = None  # the last refusal, logged once
        self.problem: str | None = None  # the same for clients: the file's name, not its path

    @property
    def ready(self) -> bool:
        """True when no blocklist is configured or the configured file has been read once."""
        return self.path is None or self.current.stamp is not None

    def check(self, force: bool = False, loaded: LoadedVersion | None = None) -> bool:
        """Reread the file if it changed (or ``force``); True when a new list was swapped in.

        ``loaded``: the version served, whose blocked rows are computed before the swap, so
        no request pays for it.

        Never raises for a bad file: the reason is logged (once per problem) and the previous
        list stays in force.
        """
        if self.path is None:
            return False
        stamp = _stamp(self.path)
        if stamp is None:
            self._refuse(f"{self.path} does not exist; keeping the {len(self.current)} ids read")
            self.problem = f"blocklist file {self.path.name} does not exist"
            return False
        if stamp == self.current.stamp and not force:
            return False
        started = time.perf_counter()
        try:
            ids = read_blocklist(self.path)
        except BlocklistError as exc:
            self._refuse(f"{exc}; keeping the {len(self.current)} ids read before")
            self.problem = str(exc).replace(str(self.path), f"blocklist file {self.path.name}")
            return False
        self._problem = self.problem = None
        previous = len(self.current)
        blocklist = Blocklist(ids, self.path, stamp, datetime.now(UTC))
        if loaded is not None:
            blocklist.rows_for(loaded)
        self.current = blocklist
        logger.info(
            "blocklist %s: %d ids (was %d), read in %.3f s",
            self.path,
            len(ids),
            previous,
            time.perf_counter() - started,
        )
        return True

    def _refuse(self, message: str) -> None:
        if message != self._problem:
            self._problem = message
            logger.error("blocklist refused: %s", message)
