"""The numpy-backed id and market columns of a loaded version (serving/columns.py), on a few
rows built inline: lookups agree with a dict, odd ids behave, duplicates and NULs are named."""

from __future__ import annotations

import pyarrow as pa
import pytest

from serving.columns import IdColumn, MarketColumn

IDS = ["h42", "é-item", "a", "zz" * 20, "Ω", "item with space", "h4", "h420"]


def test_ids_round_trip_and_every_lookup_agrees_with_a_dict() -> None:
    column = IdColumn.from_arrow(pa.chunked_array([IDS[:3], IDS[3:]]))
    index = column.index()
    assert list(column) == IDS and [column[i] for i in range(len(IDS))] == IDS
    assert dict(zip(IDS, range(len(IDS)), strict=True)) == {i: index[i] for i in IDS}
    assert len(index) == len(IDS) and set(index) == set(IDS)


@pytest.mark.parametrize("unknown", ["h", "h42 ", "h4200", "", "zz" * 21, "\0", 42, None, b"h42"])
def test_unknown_ids_are_absent_not_matched_by_prefix_or_padding(unknown: object) -> None:
    index = IdColumn.from_arrow(pa.array(IDS)).index()
    assert unknown not in index
    assert index.get(unknown) is None
    with pytest.raises(KeyError):
        index[unknown]


def test_duplicated_ids_are_named_and_a_nul_in_an_id_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1 duplicate item_id rows \(e.g. \['h42'\]\)"):
        IdColumn.from_arrow(pa.array(["h42", "x", "h42"])).index()
    with pytest.raises(ValueError, match="NUL"):
        IdColumn.from_arrow(pa.array(["ok", "bad\0id"]))


def test_a_sliced_arrow_array_reads_its_own_rows() -> None:
    column = IdColumn.from_arrow(pa.array(["skip", *IDS]).slice(1))
    assert list(column) == IDS


def test_markets_by_row_with_nulls_and_rows_per_market() -> None:
    markets = MarketColumn.from_arrow(pa.array(["paris", None, "rome", "paris"]), 4)
    assert list(markets) == ["paris", None, "rome", "paris"]
    _, rows = markets.rows_by_market()
    assert {k: v.tolist() for k, v in rows.items()} == {"paris": [0, 3], None: [1], "rome": [2]}
    none = MarketColumn.from_arrow(None, 3)
    assert list(none) == [None, None, None]
