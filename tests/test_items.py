"""The optional item table (CONTRACTS §1b): mapped, validated, deduplicated, written per day."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_config
from test_session_rules import PLAIN, ev, write_log

from embedding.core.errors import ConfigError, InputError
from embedding.core.workdir import load_table
from jobs.sessionize import run_sessionize

DAYS = [date(2026, 1, 1), date(2026, 1, 2)]
ITEM_COLUMNS = {"source.item_columns.market": "city", **PLAIN}


def clicks(tmp: Path) -> Path:
    rows = [ev("u", 0, "A"), ev("u", 60, "B"), ev("v", 86400, "B"), ev("v", 86460, "C")]
    return write_log(tmp / "clicks" / "part-0.parquet", rows).parent


def item_table(tmp: Path, rows: list[tuple]) -> Path:
    hotel, city, price, kind = zip(*rows, strict=True)
    text = pa.string()
    columns = {"item_id": pa.array(hotel, text), "city": pa.array(city, text),
               "price": pa.array(price, pa.float64()), "type": pa.array(kind, text)}  # fmt: skip
    table = pa.table(columns)
    path = tmp / "items" / "items.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


def test_item_table_is_validated_and_written_for_each_day(spark, tmp_path: Path) -> None:
    rows = [("A", "paris", 100.0, "hotel"), ("B", "paris", 80.0, "hostel"),
            ("B", "paris", 80.0, "hostel"),  # exact duplicate: kept once
            ("C", "rome", 120.0, "hotel"), ("C", "rome", 125.0, "hotel"),  # conflicting rows
            (None, "rome", 50.0, "hotel"), ("X" * 300, "rome", 1.0, "hotel"),
            ("D", None, None, None)]  # fmt: skip
    cfg = small_config(**{**ITEM_COLUMNS, "ingest.max_bad_share": 0.9})
    work = tmp_path / "work"
    result = run_sessionize(cfg, clicks(tmp_path), work, DAYS, item_table(tmp_path, rows))

    table = result.item_table
    assert (table["rows_read"], table["duplicates"], table["items"]) == (8, 1, 3)
    assert table["quarantined_by_reason"] == {
        "conflicting_item_rows": 2, "id_too_long": 1, "missing_item_id": 1
    }  # fmt: skip
    assert table["attributes"] == ["price", "type"]
    for day in DAYS:
        items = sorted(load_table(work, "items", [day]).to_pylist(), key=lambda r: r["item_id"])
        assert [(r["item_id"], r["market"], r["price"], r["type"]) for r in items] == [
            ("A", "paris", 100.0, "hotel"), ("B", "paris", 80.0, "hostel"), ("D", None, None, None)
        ]  # fmt: skip
    rejected = pq.read_table(table["quarantine_path"]).to_pylist()
    short = [(r["reason"], r["item_id"] and r["item_id"][:3], r["price"]) for r in rejected]
    assert sorted(short, key=str) == [
        ("conflicting_item_rows", "C", "120.0"), ("conflicting_item_rows", "C", "125.0"),
        ("id_too_long", "XXX", "1.0"), ("missing_item_id", None, "50.0")
    ]  # fmt: skip
    assert all(r["source_file"].endswith("items.parquet") for r in rejected)


def test_item_table_errors_name_the_file_and_field(spark, tmp_path: Path) -> None:
    log = clicks(tmp_path)
    csv = tmp_path / "items.csv"
    csv.write_text("item_id,price\nA,1\n")
    with pytest.raises(
        InputError, match=r"items.csv: missing column 'city' \(source.item_columns.market\)"
    ):
        run_sessionize(small_config(**ITEM_COLUMNS), log, tmp_path / "w", DAYS, csv)
    bad = item_table(tmp_path, [(None, "paris", 1.0, "hotel"), ("A", "paris", 1.0, "hotel")])
    with pytest.raises(InputError, match="1 of 2 item-table rows failed validation"):
        run_sessionize(small_config(**ITEM_COLUMNS), log, tmp_path / "w", DAYS, bad)
    assert not (tmp_path / "w" / "items").exists()  # nothing written


def test_item_table_and_items_from_shown_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="pick one"):
        small_config(**{"paths.items": "x.parquet", "source.items_from_shown": True,
                        "source.columns.shown_items": "shown"})  # fmt: skip
