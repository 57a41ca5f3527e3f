"""The Spark job on a hand-made log gives exactly the expected sessions, pairs and quarantine."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_config

from embedding.core.errors import InputError
from embedding.core.workdir import load_table
from jobs.sessionize import run_sessionize

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
EVENTS_MAP = "{view: view, click: click, book: book, filter: drop}"
PLAIN = {"sessionize.hash_user_ids": False, "sessionize.min_dwell_s": None}


def _write_log(path: Path, rows: list[tuple]) -> Path:
    user, ts, item, event, market = zip(*rows, strict=True)
    table = pa.table(
        {
            "user_id": pa.array(user, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "item_id": pa.array(item, pa.string()),
            "event": pa.array(event, pa.string()),
            "market": pa.array(market, pa.string()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _at(minutes: float, base: datetime = T0) -> datetime:
    return base + timedelta(minutes=minutes)


HAND_LOG = [
    # u1, first session: A B B(click, collapsed) C(book) A; the booking pairs are A->C, B->C
    ("u1", _at(0), "A", "view", "m1"),
    ("u1", _at(1), "B", "view", "m2"),
    ("u1", _at(2), "B", "click", "m2"),
    ("u1", _at(2.5), "F0", "filter", "m1"),  # not an item event: dropped, counted
    ("u1", _at(3), "C", "book", "m1"),
    ("u1", _at(4), "A", "view", "m1"),
    # u1, 60 minutes later: a new session, no booking
    ("u1", _at(64), "D", "view", "m3"),
    ("u1", _at(65), "E", "view", "m3"),
    # u2: one distinct item only -> dropped by min_distinct_items=2
    ("u2", _at(0), "A", "view", "m1"),
    ("u2", _at(1), "A", "view", "m1"),
    # u3: 10 minutes apart across midnight -> cut at the day boundary
    ("u3", datetime(2026, 1, 1, 23, 50, tzinfo=UTC), "F", "view", "m1"),
    ("u3", datetime(2026, 1, 1, 23, 55, tzinfo=UTC), "G", "book", "m1"),
    ("u3", datetime(2026, 1, 2, 0, 5, tzinfo=UTC), "H", "view", "m1"),
    ("u3", datetime(2026, 1, 2, 0, 6, tzinfo=UTC), "F", "view", "m1"),
    # bad rows: quarantined with a reason, never lost
    ("u4", _at(5), None, "view", "m1"),
    ("u4", _at(6), "A", "scroll", "m1"),
]


@pytest.fixture(scope="module")
def hand_run(spark, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("hand")
    log = _write_log(tmp / "clicks" / "part-0.parquet", HAND_LOG)
    cfg = small_config(**{"source.events": EVENTS_MAP, "ingest.max_bad_share": 0.5, **PLAIN})
    work = tmp / "work"
    result = run_sessionize(cfg, log.parent, work)
    return {"result": result, "work": work, "cfg": cfg, "log": log}


def _sessions(work: Path) -> dict[str, dict]:
    table = load_table(work, "sessions", [date(2026, 1, 1), date(2026, 1, 2)])
    return {row["session_id"]: row for row in table.to_pylist()}


def test_sessions_are_exactly_the_expected_ones(hand_run: dict) -> None:
    sessions = _sessions(hand_run["work"])
    expected = {
        "u1:2026-01-01:0001": (["A", "B", "C", "A"], ["C"], "m1", 5),
        "u1:2026-01-01:0002": (["D", "E"], [], "m3", 2),
        "u3:2026-01-01:0001": (["F", "G"], ["G"], "m1", 2),
        "u3:2026-01-02:0001": (["H", "F"], [], "m1", 2),
    }
    got = {
        sid: (s["item_ids"], s["booked_items"], s["market"], s["n_events"])
        for sid, s in sessions.items()
    }
    assert got == expected
    assert sessions["u1:2026-01-01:0001"]["start_ts"] == T0


def test_booking_pairs_exclude_self_and_later_items(hand_run: dict) -> None:
    pairs = load_table(hand_run["work"], "booking_pairs", [date(2026, 1, 1), date(2026, 1, 2)])
    got = sorted(
        (r["session_id"], r["context_item"], r["booked_item"], r["market"])
        for r in pairs.to_pylist()
    )
    assert got == [
        ("u1:2026-01-01:0001", "A", "C", "m1"),
        ("u1:2026-01-01:0001", "B", "C", "m1"),
        ("u3:2026-01-01:0001", "F", "G", "m1"),
    ]


def test_counts_quarantine_and_markers(hand_run: dict) -> None:
    result, work = hand_run["result"], hand_run["work"]
    assert result.rows_read == len(HAND_LOG)
    assert result.dropped_by_type == {"filter": 1}
    assert result.quarantined_by_reason == {"missing_item_id": 1, "unknown_event": 1}
    assert result.events_valid == len(HAND_LOG) - 3
    assert result.days == ["2026-01-01", "2026-01-02"]
    quarantined = pq.read_table(result.quarantine_path).to_pylist()
    assert sorted(r["reason"] for r in quarantined) == ["missing_item_id", "unknown_event"]
    assert all(r["source_file"].endswith("part-0.parquet") for r in quarantined)
    marker = json.loads((work / "_days" / "2026-01-01.json").read_text())
    assert marker["n_sessions"] == 3 and marker["n_booking_pairs"] == 3


def test_rerun_replaces_a_day_without_duplicates(hand_run: dict) -> None:
    work = hand_run["work"]
    before = json.loads((work / "_days" / "2026-01-02.json").read_text())
    run_sessionize(hand_run["cfg"], hand_run["log"].parent, work, [date(2026, 1, 2)])
    after = json.loads((work / "_days" / "2026-01-02.json").read_text())
    assert after == before
    assert len(_sessions(work)) == 4
    assert len(list((work / "sessions" / "dt=2026-01-02").glob("*.parquet"))) == 1


def test_too_many_bad_rows_fail_the_run(spark, tmp_path: Path) -> None:
    log = _write_log(tmp_path / "clicks.parquet", HAND_LOG)
    cfg = small_config(**{"source.events": EVENTS_MAP})  # default limit: 5%
    with pytest.raises(InputError, match=r"2 of 15 item rows .* failed validation"):
        run_sessionize(cfg, log, tmp_path / "work")
    assert not (tmp_path / "work" / "_days").exists()


def test_csv_with_epoch_seconds_and_source_names(spark, tmp_path: Path) -> None:
    csv = tmp_path / "log.csv"
    base = int(T0.timestamp())
    csv.write_text(
        "uid,time,hotel,action,city\n"
        f"a,{base},h1,img,X\n"
        f"a,{base + 30},h2,img,X\n"
        f"a,{base + 60},h3,clickout,X\n"
        f"a,{base + 70},,img,X\n"
    )
    cfg = small_config(
        **{
            "source.columns": "{user_id: uid, ts: time, item_id: hotel, event: action, "
            "market: city}",
            "source.events": "{img: view, clickout: book}",
            "ingest.max_bad_share": 0.5,
            **PLAIN,
        }
    )
    result = run_sessionize(cfg, csv, tmp_path / "work")
    assert result.quarantined_by_reason == {"missing_item_id": 1}
    sessions = load_table(tmp_path / "work", "sessions", [date(2026, 1, 1)]).to_pylist()
    assert [(s["item_ids"], s["booked_items"]) for s in sessions] == [(["h1", "h2", "h3"], ["h3"])]
