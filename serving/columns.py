"""A version's item ids and markets held in numpy arrays, not as a million Python objects.

Why: building a dict and two tuples over a million strings holds the GIL for a third of a
second while a new version loads, freeing them holds it for another 60 ms when the old one
goes, and both stall every request in flight; they also take ~150 MB. Here the ids are one
fixed-width byte matrix (UTF-8, NUL-padded) with a sorted copy for lookups by binary search,
and the markets one int32 code per row plus the few distinct names. Building them is numpy and
Arrow work (the GIL is released in the long steps); freeing them is freeing a few buffers.

    ids = IdColumn.from_arrow(table.column("item_id"))   # Sequence[str]: ids[row]
    row_of = ids.index()                                 # Mapping[str, int]: row_of[item_id]
    markets = MarketColumn.from_arrow(table.column("market"))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_CHUNK = 65_536  # rows copied into the byte matrix at once (bounds the temporary index arrays)


def string_item_ids(column: pa.ChunkedArray, where: Path | str) -> pa.ChunkedArray:
    """An ``item_id`` column as strings (dictionary-encoded ones decoded).

    Raises:
        ValueError: it is not a string column, or has nulls; the message names ``where``.
    """
    if pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"{where}: 'item_id' is {column.type}, expected string")
    if column.null_count:
        raise ValueError(f"{where}: {column.null_count} rows have a null item_id")
    return column


class IdColumn(Sequence[str]):
    """Item ids by row: ``ids[row]`` decodes one id; ``len(ids)``; iteration in row order."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys  # (n,) dtype S<width>: UTF-8 bytes, NUL-padded

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.Array) -> IdColumn:
        """From a string column without nulls. Raises ValueError for an id holding a NUL
        character (it would compare equal to the id without it)."""
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        array = array.cast(pa.large_string())  # int64 offsets, whatever the file used
        if len(array) and pc.any(pc.match_substring(array, "\0")).as_py():
            raise ValueError("an item_id holds a NUL character")
        n = len(array)
        lengths = pc.binary_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
        width = max(1, int(lengths.max()) if n else 1)
        _, offsets_buf, values_buf = array.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + n + 1]
        values = np.frombuffer(values_buf, dtype=np.uint8) if values_buf is not None else None
        matrix = np.zeros((n, width), dtype=np.uint8)
        columns = np.arange(width)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            inside = columns[None, :] < lengths[start:stop, None]  # (chunk, width)
            source = offsets[start:stop, None] + columns[None, :]  # (chunk, width)
            matrix[start:stop][inside] = values[source[inside]]
        return cls(matrix.view(f"S{width}").reshape(n))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [key.decode() for key in self.keys[row]]
        return self.keys[row].decode()

    def __iter__(self) -> Iterator[str]:
        for key in self.keys:
            yield key.decode()

    def index(self) -> IdIndex:  # type: ignore[override]
        """The id -> row mapping (raises ValueError naming duplicated ids)."""
        return IdIndex(self.keys)


class IdIndex(Mapping[str, int]):
    """item id -> row by binary search over the sorted ids: O(log n) per lookup."""

    def __init__(self, keys: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")  # (n,)
        self._sorted = keys[order]
        self._rows = order.astype(np.int64)
        self._width = keys.dtype.itemsize
        same = np.flatnonzero(self._sorted[1:] == self._sorted[:-1])
        if len(same):
            examples = sorted({self._sorted[i].decode() for i in same[:5]})
            raise ValueError(f"{len(same)} duplicate item_id rows (e.g. {examples})")

    def _position(self, item_id: object) -> int | None:
        if not isinstance(item_id, str):
            return None
        key = item_id.encode("utf-8", "surrogatepass")
        if len(key) > self._width or b"\0" in key or not key:
            return None
        at = int(np.searchsorted(self._sorted, key))
        if at < len(self._sorted) and self._sorted[at] == key:
            return at
        return None

    def __getitem__(self, item_id: str) -> int:
        at = self._position(item_id)
        if at is None:
            raise KeyError(item_id)
        return int(self._rows[at])

    def __contains__(self, item_id: object) -> bool:
        return self._position(item_id) is not None

    def __len__(self) -> int:
        return len(self._sorted)

    def __iter__(self) -> Iterator[str]:
        for key in self._sorted:
            yield key.decode()


class MarketColumn(Sequence[str | None]):
    """Markets by row: one int32 code per row and the distinct names (None: no market)."""

    def __init__(self, codes: np.ndarray, names: list[str | None]) -> None:
        self.codes = codes  # (n,) int32 into names
        self.names = names

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.Array | None, n_rows: int) -> MarketColumn:
        if column is None:
            return cls(np.zeros(n_rows, dtype=np.int32), [None])
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        encoded = pc.dictionary_encode(array.cast(pa.string()))
        names: list[str | None] = [*encoded.dictionary.to_pylist(), None]
        codes = encoded.indices.fill_null(len(names) - 1).to_numpy(zero_copy_only=False)
        return cls(codes.astype(np.int32), names)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self.names[c] for c in self.codes[row]]
        return self.names[self.codes[row]]

    def rows_by_market(self) -> tuple[np.ndarray, dict[str | None, np.ndarray]]:
        """(codes, market -> its rows ascending), for markets that have rows."""
        order = np.argsort(self.codes, kind="stable")
        bounds = np.searchsorted(self.codes[order], np.arange(len(self.names) + 1))
        rows = {
            name: order[bounds[c] : bounds[c + 1]]
            for c, name in enumerate(self.names)
            if bounds[c + 1] > bounds[c]
        }
        return self.codes, rows
