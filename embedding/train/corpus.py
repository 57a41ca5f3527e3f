"""The skip-gram training corpus, streamed from the session Parquet files.

Input: the ``sessions`` partition files of the training days and the ids of held-out sessions
(validation and test) to skip. Output: an iterable of item-id lists that gensim reads once for
the vocabulary and once per epoch. Nothing is ever held as one giant list of lists:

- the first pass reads one record batch at a time and turns its item ids into int32 codes into
  one table of distinct item strings (vocabulary-sized);
- later passes replay those codes (4 bytes per token, 4 per session) when ``compact`` is on (the
  default): no Parquet decoding per epoch, which on 2 cores cost up to 15% of the training time
  (``make bench-train``); with ``compact=False`` every pass reads the files again, and memory
  is one record batch.

Either way each distinct item is one ``str`` object for the whole corpus, so gensim sees the
same strings every epoch (their hashes cached). Booked sessions are yielded ``oversample``
times in a row (Airbnb oversampled them 5x); the stored data is never duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.core.errors import InputError

logger = logging.getLogger(__name__)

COLUMNS = ["session_id", "item_ids", "booked_items"]


@dataclass(frozen=True)
class _Chunk:
    """One record batch of training sessions as codes."""

    codes: np.ndarray  # (n_tokens,) int32 into the corpus' names
    bounds: np.ndarray  # (n_sessions + 1,) int32 token offsets
    booked: np.ndarray  # (n_sessions,) bool


class ParquetSessionCorpus:
    """Re-iterable stream of training sessions' ``item_ids`` over Parquet files.

    ``exclude`` holds the session ids that must not be trained on (validation and test).
    """

    def __init__(
        self,
        files: Sequence[Path | str],
        exclude: set[str] | frozenset[str] = frozenset(),
        oversample: int = 1,
        batch_rows: int = 8192,
        compact: bool = True,
    ) -> None:
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        self.files = [Path(f) for f in files]
        self.exclude = pa.array(sorted(exclude), pa.string())
        self.oversample = oversample
        self.batch_rows = batch_rows
        self.compact = compact
        self._code: dict[str, int] = {}  # distinct item id -> code
        self._names: list[str] = []  # code -> the one str object of that item
        self._chunks: list[_Chunk] | None = None  # the codes of a complete pass (compact)
        self.n_sessions = 0  # of the last complete pass
        self.n_booked = 0

    def shape(self) -> tuple[int, int]:
        """(tokens in one pass, distinct items) of the stream; reads one pass when none has run
        yet (with ``compact``, that pass is the one later passes replay)."""
        if self._chunks is None:
            n_tokens = sum(len(session) for session in self)
        else:
            n_tokens = sum(
                int(np.diff(c.bounds).astype(np.int64) @ np.where(c.booked, self.oversample, 1))
                for c in self._chunks
            )
        return n_tokens, len(self._names)

    @property
    def cache_bytes(self) -> int:
        """Memory held by the replayed codes (0 before a complete pass or when not compact)."""
        chunks = self._chunks or []
        return sum(c.codes.nbytes + c.bounds.nbytes + c.booked.nbytes for c in chunks)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for file in self.files:
            try:
                reader = pq.ParquetFile(file)
                yield from reader.iter_batches(batch_size=self.batch_rows, columns=COLUMNS)
            except (pa.ArrowInvalid, OSError, KeyError) as exc:
                raise InputError(f"{file}: cannot read training sessions ({exc})") from exc

    def _encode(self, values: pa.Array) -> np.ndarray:
        """The batch's item ids as corpus codes (new items get the next codes)."""
        encoded = pc.dictionary_encode(values)
        code, names = self._code, self._names
        local = np.empty(len(encoded.dictionary), dtype=np.int32)
        for i, name in enumerate(encoded.dictionary.to_pylist()):
            if name not in code:
                code[name] = len(names)
                names.append(name)
            local[i] = code[name]
        return local[encoded.indices.to_numpy(zero_copy_only=False)]

    def _read(self) -> Iterator[_Chunk]:
        for batch in self._batches():
            if len(self.exclude):
                keep = pc.invert(pc.is_in(batch.column("session_id"), value_set=self.exclude))
                batch = batch.filter(keep)
            if batch.num_rows == 0:
                continue
            items = batch.column("item_ids")
            bounds = items.offsets.to_numpy() - items.offsets[0].as_py()
            booked = pc.fill_null(pc.list_value_length(batch.column("booked_items")), 0)
            yield _Chunk(
                self._encode(items.flatten()),
                bounds.astype(np.int32),
                booked.to_numpy(zero_copy_only=False) > 0,
            )

    def __iter__(self) -> Iterator[list[str]]:
        replay = self._chunks is not None
        chunks = self._chunks if replay else self._read()
        kept: list[_Chunk] = []
        n_sessions = n_booked = 0
        names = np.array(self._names, dtype=object) if replay else None
        for chunk in chunks:
            if not replay:
                if self.compact:
                    kept.append(chunk)
                names = np.array(self._names, dtype=object)
            # plain Python lists and ints in the per-session loop: list slicing is C-fast,
            # numpy scalar indexing is not (this loop is the stream's whole cost)
            flat = names[chunk.codes].tolist()
            bounds = chunk.bounds.tolist()
            repeats = np.where(chunk.booked, self.oversample, 1).tolist()
            n_sessions += len(repeats)
            n_booked += int(chunk.booked.sum())
            for start, end, repeat in zip(bounds[:-1], bounds[1:], repeats, strict=True):
                session = flat[start:end]
                yield session
                for _ in range(repeat - 1):
                    yield session
        self.n_sessions, self.n_booked = n_sessions, n_booked
        if self.compact and not replay:
            self._chunks = kept
            logger.info(
                "training corpus: %d sessions, %d distinct items, %.1f MiB of codes replayed "
                "from now on",
                n_sessions,
                len(self._names),
                self.cache_bytes / 2**20,
            )
