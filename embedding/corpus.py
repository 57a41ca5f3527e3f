"""The skip-gram training corpus, streamed from the session Parquet files.

Input: the ``sessions`` partition files of the training days and the ids of held-out sessions
(validation and test) to skip. Output: an iterable of item-id lists that gensim reads once for
the vocabulary and once per epoch. Only one record batch is decoded at a time, so memory is
bounded by the batch size, not by the corpus: nothing is ever held as one giant list.

Booked sessions are yielded ``oversample`` times in a row (Airbnb oversampled them 5x); the
stored data is never duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.errors import InputError

logger = logging.getLogger(__name__)

COLUMNS = ["session_id", "item_ids", "booked_items"]


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
    ) -> None:
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        self.files = [Path(f) for f in files]
        self.exclude = pa.array(sorted(exclude), pa.string())
        self.oversample = oversample
        self.batch_rows = batch_rows
        self.n_sessions = 0  # of the last complete pass
        self.n_booked = 0

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for file in self.files:
            try:
                reader = pq.ParquetFile(file)
                yield from reader.iter_batches(batch_size=self.batch_rows, columns=COLUMNS)
            except (pa.ArrowInvalid, OSError, KeyError) as exc:
                raise InputError(f"{file}: cannot read training sessions ({exc})") from exc

    def __iter__(self) -> Iterator[list[str]]:
        n_sessions = n_booked = 0
        for batch in self._batches():
            if len(self.exclude):
                keep = pc.invert(pc.is_in(batch.column("session_id"), value_set=self.exclude))
                batch = batch.filter(keep)
            if batch.num_rows == 0:
                continue
            items = batch.column("item_ids")
            # flat values to Python once, then slice: much cheaper than a nested to_pylist
            flat = items.flatten().to_pylist()
            offsets = items.offsets.to_numpy() - items.offsets[0].as_py()
            booked = pc.fill_null(pc.list_value_length(batch.column("booked_items")), 0)
            booked = booked.to_numpy(zero_copy_only=False) > 0
            n_sessions += batch.num_rows
            n_booked += int(booked.sum())
            repeats = np.where(booked, self.oversample, 1)
            for row in range(batch.num_rows):
                session = flat[offsets[row] : offsets[row + 1]]
                for _ in range(repeats[row]):
                    yield session
        self.n_sessions, self.n_booked = n_sessions, n_booked
