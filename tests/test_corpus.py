"""The streamed training corpus: real Parquet files, held-out sessions skipped, booked sessions
oversampled in the stream, re-iterable for gensim, bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.core.config import Word2VecParams
from embedding.core.errors import InputError
from embedding.train.corpus import ParquetSessionCorpus
from embedding.train.w2v import SessionCorpus, train_word2vec


def write_sessions(path: Path, rows: list[tuple[str, list[str], list[str] | None]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "session_id": pa.array([r[0] for r in rows], pa.string()),
            "item_ids": pa.array([r[1] for r in rows], pa.list_(pa.string())),
            "booked_items": pa.array([r[2] for r in rows], pa.list_(pa.string())),
            "n_events": pa.array([len(r[1]) for r in rows], pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    return path


@pytest.fixture
def two_days(tmp_path: Path) -> list[Path]:
    day1 = write_sessions(
        tmp_path / "dt=2026-01-01" / "part-0.parquet",
        [("s1", ["a", "b"], None), ("s2", ["b", "c"], ["c"]), ("s3", ["c", "d"], [])],
    )
    day2 = write_sessions(
        tmp_path / "dt=2026-01-02" / "part-0.parquet",
        [("s4", ["d", "e", "f"], ["f"]), ("s5", ["e", "a"], None)],
    )
    return [day1, day2]


def test_stream_yields_training_sessions_in_file_order(two_days: list[Path]) -> None:
    corpus = ParquetSessionCorpus(two_days)
    assert list(corpus) == [["a", "b"], ["b", "c"], ["c", "d"], ["d", "e", "f"], ["e", "a"]]
    assert (corpus.n_sessions, corpus.n_booked) == (5, 2)


def test_held_out_sessions_are_skipped(two_days: list[Path]) -> None:
    corpus = ParquetSessionCorpus(two_days, exclude={"s2", "s5"})
    assert list(corpus) == [["a", "b"], ["c", "d"], ["d", "e", "f"]]


def test_booked_sessions_are_oversampled_in_the_stream_only(two_days: list[Path]) -> None:
    corpus = ParquetSessionCorpus(two_days, oversample=3)
    streamed = list(corpus)
    assert streamed.count(["b", "c"]) == 3 and streamed.count(["d", "e", "f"]) == 3
    assert streamed.count(["a", "b"]) == 1  # null booked_items: not booked
    assert streamed.count(["c", "d"]) == 1  # empty booked_items: not booked
    assert pq.read_table(two_days[0]).num_rows == 3  # nothing duplicated on disk
    in_memory = SessionCorpus(
        [["a", "b"], ["b", "c"], ["c", "d"], ["d", "e", "f"], ["e", "a"]],
        [False, True, False, True, False],
        oversample=3,
    )
    assert streamed == list(in_memory)


def test_corpus_is_re_iterable_for_gensim(two_days: list[Path]) -> None:
    corpus = ParquetSessionCorpus(two_days)
    assert list(corpus) == list(corpus)


def test_streamed_and_in_memory_training_give_identical_vectors(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    rows = [(f"s{i}", [f"i{rng.randint(0, 40)}" for _ in range(5)], None) for i in range(400)]
    files = [write_sessions(tmp_path / "dt=2026-01-01" / "p.parquet", rows)]
    params = Word2VecParams(epochs=2, workers=1, vector_size=8, min_count=1)
    streamed = train_word2vec(ParquetSessionCorpus(files), params, seed=3)
    listed = train_word2vec(SessionCorpus([r[1] for r in rows], [False] * 400), params, seed=3)
    assert streamed.ids == listed.ids
    assert (streamed.vectors == listed.vectors).all()
    assert (streamed.counts == listed.counts).all()


def test_memory_is_bounded_by_the_batch_not_the_corpus(tmp_path: Path) -> None:
    rows = [(f"s{i:06d}", [f"item{i % 997}", f"item{(i * 7) % 991}"], None) for i in range(20000)]
    files = [write_sessions(tmp_path / "dt=2026-01-01" / "p.parquet", rows)]
    corpus = ParquetSessionCorpus(files, batch_rows=1000)
    tracemalloc.start()
    n = sum(1 for _ in corpus)
    _, streamed_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    whole = pq.read_table(files[0], columns=["item_ids"]).column("item_ids").to_pylist()
    _, list_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 20000 and len(whole) == 20000
    assert streamed_peak < list_peak / 4


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "dt=2026-01-01" / "part-0.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"part-0\.parquet"):
        list(ParquetSessionCorpus([bad]))


def test_replayed_passes_equal_the_first_and_reuse_one_string_per_item(
    two_days: list[Path],
) -> None:
    corpus = ParquetSessionCorpus(two_days, exclude={"s2"}, oversample=2)
    first, second = list(corpus), list(corpus)
    assert first == second == [["a", "b"], ["c", "d"], ["d", "e", "f"], ["d", "e", "f"], ["e", "a"]]
    assert first[0][0] is second[4][1]  # "a": one str object for the whole corpus
    assert corpus.cache_bytes > 0 and (corpus.n_sessions, corpus.n_booked) == (4, 1)


def test_without_compact_every_pass_reads_the_files(two_days: list[Path], tmp_path: Path) -> None:
    corpus = ParquetSessionCorpus(two_days, compact=False)
    assert list(corpus) == list(ParquetSessionCorpus(two_days))
    assert corpus.cache_bytes == 0
    two_days[1].write_bytes(b"gone")  # a pass after the first really reads again
    with pytest.raises(InputError, match="cannot read training sessions"):
        list(corpus)
