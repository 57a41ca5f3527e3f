"""Loading a table over several day partitions, as the training window does."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.core.errors import InputError
from embedding.core.workdir import load_table


def write_day(work: Path, day: str, start_ts: pa.Array) -> None:
    folder = work / "sessions" / f"dt={day}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"session_id": ["s"], "start_ts": start_ts}), folder / "p.parquet")


def test_partitions_from_an_older_writer_are_cast_to_the_newest_types(tmp_path: Path) -> None:
    moment = datetime(2026, 1, 1, 10, tzinfo=UTC)
    write_day(tmp_path, "2026-01-01", pa.array([moment.replace(tzinfo=None)], pa.timestamp("ns")))
    write_day(tmp_path, "2026-01-02", pa.array([moment], pa.timestamp("us", tz="UTC")))
    table = load_table(tmp_path, "sessions", [date(2026, 1, 1), date(2026, 1, 2)])
    assert table.schema.field("start_ts").type == pa.timestamp("us", tz="UTC")
    assert table.column("start_ts").to_pylist() == [moment, moment]
    assert table.column("dt").to_pylist() == ["2026-01-01", "2026-01-02"]
    assert load_table(tmp_path, "sessions", [date(2026, 1, 3)]) is None


def test_a_partition_that_cannot_be_cast_names_its_day(tmp_path: Path) -> None:
    write_day(tmp_path, "2026-01-01", pa.array(["not a time"]))
    write_day(tmp_path, "2026-01-02", pa.array([datetime(2026, 1, 2, tzinfo=UTC)]))
    with pytest.raises(InputError, match=r"dt=2026-01-01: written with other column types"):
        load_table(tmp_path, "sessions", [date(2026, 1, 1), date(2026, 1, 2)])
