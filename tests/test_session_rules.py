"""Each session rule and each bad-input kind on a hand-made log, with exact expected output,
and a property: every input row ends in exactly one place."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import stat
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import day_markers, small_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding.core.errors import ConfigError, EmbeddingError, InputError
from embedding.core.workdir import load_table
from jobs.sessionize import run_sessionize

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
DAY1 = [date(2026, 1, 1)]
PLAIN = {"sessionize.hash_user_ids": False, "sessionize.min_dwell_s": None}


def write_log(path: Path, rows: list[dict]) -> Path:
    columns = {key: [row.get(key) for row in rows] for key in rows[0]}
    types = {"ts": pa.timestamp("us", tz="UTC"), "seq": pa.int64()}
    table = pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in columns.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def ev(user: str, seconds: float, item: str, event: str = "view", **extra: object) -> dict:
    return {"user_id": user, "ts": T0 + timedelta(seconds=seconds), "item_id": item,
            "event": event, "market": "m1", **extra}  # fmt: skip


def run(tmp: Path, rows: list[dict], days: list[date] | None = None, **overrides: object):
    log = write_log(tmp / "clicks" / "part-0.parquet", rows)
    cfg = small_config(**{"ingest.max_bad_share": 0.5, **PLAIN, **overrides})
    work = tmp / "work"
    result = run_sessionize(cfg, log.parent, work, days)
    sessions = load_table(work, "sessions", [date.fromisoformat(d) for d in result.days])
    by_id = {r["session_id"]: r for r in sessions.to_pylist()} if sessions is not None else {}
    return result, by_id, work


def test_short_dwell_events_are_dropped_but_bookings_kept(spark, tmp_path: Path) -> None:
    rows = [ev("u", 0, "A"), ev("u", 10, "B"), ev("u", 70, "C"), ev("u", 75, "D", "book"),
            ev("u", 80, "E"), ev("u", 200, "F")]  # fmt: skip
    result, sessions, _ = run(tmp_path, rows, **{"sessionize.min_dwell_s": 30})
    # A (left after 10 s) and C (5 s) are dropped; D is a booking (kept); F is the last
    assert [s["item_ids"] for s in sessions.values()] == [["B", "D", "E", "F"]]
    assert result.short_dwell_dropped == 2


def test_a_duplicate_does_not_shorten_the_dwell_of_its_original(spark, tmp_path: Path) -> None:
    rows = [ev("u", 0, "A"), ev("u", 0, "A"), ev("u", 60, "B"), ev("u", 65, "C"),
            ev("u", 65, "C"), ev("u", 200, "D")]  # fmt: skip
    result, sessions, _ = run(tmp_path, rows, **{"sessionize.min_dwell_s": 30})
    # A stays 60 s (its duplicate is not "the next event"); B leaves after 5 s
    assert [s["item_ids"] for s in sessions.values()] == [["A", "C", "D"]]
    assert (result.duplicates, result.short_dwell_dropped) == (2, 1)


def test_duplicates_truncation_and_seq_order(spark, tmp_path: Path) -> None:
    rows = [ev("u", 0, "A", seq=2), ev("u", 0, "Z", seq=1), ev("u", 60, "B", seq=3),
            ev("u", 60, "B", seq=3), ev("u", 120, "C", seq=4),
            ev("u", 180, "D", seq=5)]  # fmt: skip
    overrides = {"sessionize.max_session_length": 3, "source.columns.seq": "seq"}
    result, sessions, _ = run(tmp_path, rows, **overrides)
    (session,) = sessions.values()
    assert session["item_ids"] == ["Z", "A", "B"]  # same ts: seq decides, then truncation
    assert result.duplicates == 1
    assert (result.truncated_sessions, result.truncated_events) == (1, 2)


def test_source_session_ids_are_used_when_configured(spark, tmp_path: Path) -> None:
    rows = [ev("u", 0, "A", sid="s1"), ev("u", 30, "B", sid="s1"), ev("u", 60, "C", sid="s2"),
            ev("u", 90, "D", sid="s2"), ev("u", 4000, "E", sid="s2")]  # fmt: skip
    result, sessions, _ = run(tmp_path, rows, **{"source.columns.session_id": "sid"})
    # a new source id starts a session; a long pause still cuts one
    assert sorted(s["item_ids"] for s in sessions.values()) == [["A", "B"], ["C", "D"]]
    assert result.short_sessions == 1 and result.short_session_events == 1


def test_conversions_and_pairs_with_several_bookings(spark, tmp_path: Path) -> None:
    rows = [ev("u", 0, "A"), ev("u", 60, "B", "book"), ev("u", 120, "C"), ev("u", 180, "B", "book"),
            ev("u", 240, "D", "book")]  # fmt: skip
    result, _, work = run(tmp_path, rows)
    conversions = load_table(work, "conversions", DAY1).to_pylist()
    got = [(c["position"], c["booked_item"], c["context_items"]) for c in conversions]
    # context items: distinct, most recent first, the booked item too when seen before
    assert sorted(got) == [(1, "B", ["A"]), (3, "B", ["C", "B", "A"]), (4, "D", ["B", "C", "A"])]
    pairs = load_table(work, "booking_pairs", DAY1).to_pylist()
    assert sorted((p["context_item"], p["booked_item"]) for p in pairs) == [
        ("A", "B"), ("A", "D"), ("B", "D"), ("C", "B"), ("C", "D")
    ]  # fmt: skip
    assert result.conversions == 3 and result.booking_pairs == 5


def test_each_bad_kind_is_quarantined_with_its_reason(spark, tmp_path: Path) -> None:
    good = [ev("u", 60 * i, f"I{i}") for i in range(20)]
    bad = [
        {**ev("b", 0, "A"), "user_id": None},
        {**ev("b", 0, "A"), "item_id": None},
        {**ev("b", 0, "A"), "event": None},
        {**ev("b", 0, "A"), "event": "hover"},
        {**ev("b", 0, "A"), "ts": datetime(1999, 12, 31, tzinfo=UTC)},
        {**ev("b", 0, "A"), "ts": T0 + timedelta(days=3)},  # later than the end + 24 h
        {**ev("b", 0, "x" * 300)},
    ]
    late_but_fine = {**ev("c", 0, "A"), "ts": T0 + timedelta(hours=20)}  # next day: left alone
    result, sessions, _ = run(tmp_path, good + bad + [late_but_fine], DAY1)
    assert result.quarantined_by_reason == {
        "id_too_long": 1, "missing_event": 1, "missing_item_id": 1, "missing_user_id": 1,
        "ts_out_of_range": 2, "unknown_event": 1,
    }  # fmt: skip
    assert result.outside_days == 1
    quarantined = pq.read_table(result.quarantine_path)
    assert quarantined.num_rows == len(bad)
    assert set(quarantined.column_names) >= {"reason", "source_file", "user_id", "item_id"}
    assert len(sessions) == 1


def test_wrong_type_in_csv_is_quarantined(spark, tmp_path: Path) -> None:
    csv = tmp_path / "log.csv"
    base = int(T0.timestamp())
    lines = [f"u,{base + 60 * i},I{i},view,{i}" for i in range(30)]
    lines += [f"u,{base + 5},X,view,seven", "u,yesterday,Y,view,1"]
    csv.write_text("user_id,ts,item_id,event,seq\n" + "\n".join(lines) + "\n")
    cfg = small_config(**{**PLAIN, "source.columns.seq": "seq", "source.columns.market": None,
                          "ingest.max_bad_share": 0.1})  # fmt: skip
    result = run_sessionize(cfg, csv, tmp_path / "work")
    assert result.quarantined_by_reason == {"bad_ts": 1, "wrong_type_seq": 1}


def spark_plans(spark) -> list[str]:
    """The physical plans of every SQL execution this Spark session has run (its UI's SQL tab)."""
    executions = spark._jsparkSession.sharedState().statusStore().executionsList()
    return [executions.apply(i).physicalPlanDescription() for i in range(executions.size())]


def test_user_ids_are_hmac_sha256_of_the_salt_from_the_environment_and_the_salt_is_in_no_plan(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    salt = "pepper-pepper-pepper-0123"
    monkeypatch.setenv("EMBEDDING_USER_SALT", salt)
    rows = [ev("alice", 0, "A"), ev("alice", 60, "B")]
    seen_before = len(spark_plans(spark))
    with caplog.at_level(logging.DEBUG):
        result, sessions, _ = run(tmp_path, rows, **{"sessionize.hash_user_ids": True})
    (session,) = sessions.values()
    expected = hmac.new(salt.encode(), b"alice", hashlib.sha256).hexdigest()[:16]
    assert session["user_id"] == expected and "alice" not in session["session_id"]
    assert result.to_dict().get("user_salt_source") == "env:EMBEDDING_USER_SALT"
    # nothing derived from the salt is recorded (no sha256(salt) fingerprint to guess it from)
    recorded = json.dumps(result.to_dict())
    assert salt not in recorded and hashlib.sha256(salt.encode()).hexdigest()[:12] not in recorded
    # the plans Spark ran (shown in its UI and event log) and the logs hold no form of the salt
    padded = salt.encode().ljust(64, b"\0")
    secrets = [salt, salt.encode().hex(), bytes(b ^ 0x36 for b in padded).hex()]
    plans = "\n".join(spark_plans(spark)[seen_before:])
    assert "sha2" in plans
    for secret in secrets:
        assert secret not in plans and secret not in caplog.text


def test_without_a_salt_a_random_owner_only_one_is_created_once_and_reused(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMBEDDING_USER_SALT", raising=False)
    rows = [ev("alice", 0, "A"), ev("alice", 60, "B")]
    _, first, work = run(tmp_path, rows, **{"sessionize.hash_user_ids": True})
    salt_file = work / ".user_salt"
    assert salt_file.is_file(), "no salt was created: ids are hashed unsalted"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_text().strip().encode()
    assert len(salt) >= 32
    (session,) = first.values()
    assert session["user_id"] == hmac.new(salt, b"alice", hashlib.sha256).hexdigest()[:16]
    # a second run on the same work folder reuses it: the same ids
    result, again, _ = run(tmp_path, rows, **{"sessionize.hash_user_ids": True})
    assert result.user_salt_source == "file" and again == first
    assert salt_file.read_text().strip().encode() == salt
    # a salt file others can read is refused, not used
    salt_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        run(tmp_path, rows, **{"sessionize.hash_user_ids": True})


def test_a_salt_shorter_than_16_bytes_stops_the_run_before_reading_events(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDDING_USER_SALT", "pepper")
    rows = [ev("alice", 0, "A"), ev("alice", 60, "B")]
    with pytest.raises(ConfigError, match="6 bytes; a user-id salt needs at least 16") as err:
        run(tmp_path, rows, **{"sessionize.hash_user_ids": True})
    assert err.value.exit_code == 2 and "pepper" not in str(err.value)
    assert not (tmp_path / "work" / "sessions").exists()  # nothing written


def test_trivago_items_table_from_impressions(spark, tmp_path: Path) -> None:
    rows = [ev("u", 0, "A", shown=None, prices=None),
            ev("u", 60, "B", "book", shown="A|B|C", prices="100|200|300"),
            ev("v", 0, "A", "book", shown="C|A", prices="310|90")]  # fmt: skip
    overrides = {"source.columns.shown_items": "shown", "source.columns.shown_prices": "prices",
                 "source.items_from_shown": True, "sessionize.min_distinct_items": 1}  # fmt: skip
    _, _, work = run(tmp_path, rows, **overrides)
    items = {r["item_id"]: r for r in load_table(work, "items", DAY1).to_pylist()}
    assert {k: (v["price"], v["n_shown"]) for k, v in items.items()} == {
        "A": (95.0, 2), "B": (200.0, 1), "C": (305.0, 2)
    }  # fmt: skip
    conversions = load_table(work, "conversions", DAY1).to_pylist()
    assert sorted(c["shown_items"] for c in conversions) == [["A", "B", "C"], ["C", "A"]]


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),
        st.integers(min_value=0, max_value=2 * 86400),  # two days
        st.sampled_from(["A", "B", "C", "D", None]),
        st.sampled_from(["view", "click", "book", "filter", "hover"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=EVENTS)
def test_every_row_ends_in_exactly_one_place(spark, tmp_path_factory, rows) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    log = [ev(u, s, i, e) for u, s, i, e in rows]
    cfg = small_config(**{"ingest.max_bad_share": 1.0, "sessionize.min_dwell_s": 30,
                          "source.events": "{view: view, click: click, book: book, filter: drop}",
                          "sessionize.max_session_length": 3})  # fmt: skip
    path = write_log(tmp / "clicks" / "part-0.parquet", log)
    try:
        result = run_sessionize(cfg, path.parent, tmp / "work")
    except Exception as exc:  # only "no valid events" is allowed to stop a run
        assert "no valid item events" in str(exc)
        return
    r = result
    assert r.rows_read == len(rows)
    placed = sum(r.dropped_by_type.values()) + sum(r.quarantined_by_reason.values())
    assert r.rows_read == placed + r.duplicates + r.outside_days + r.events_valid
    # duplicates counted from the input itself: valid rows minus distinct valid rows
    valid = [row for row in rows if row[2] is not None and row[3] in ("view", "click", "book")]
    assert r.duplicates == len(valid) - len(set(valid))
    assert r.events_valid == r.short_dwell_dropped + r.short_session_events + r.session_events
    assert r.session_events == r.session_items + r.collapsed_repeats + r.truncated_events
    days = [date.fromisoformat(d) for d in r.days]
    sessions = load_table(tmp / "work", "sessions", days)
    n_items = sum(len(x) for x in sessions.column("item_ids").to_pylist()) if sessions else 0
    assert n_items == r.session_items


def _files(work: Path) -> list[str]:
    return sorted(
        str(p.relative_to(work))
        for p in work.rglob("*")
        if p.is_file() and "quarantine" not in p.parts
    )


@pytest.mark.slow
def test_seven_day_run_equals_seven_one_day_runs_and_reruns_change_nothing(
    spark, tmp_path: Path
) -> None:
    from embedding.devtools.generate import generate_clicklog

    clicks = tmp_path / "clicks"
    generate_clicklog(clicks, events=20_000, days=7, seed=11)
    cfg = small_config(**{"sessionize.hash_user_ids": True})
    week = run_sessionize(cfg, clicks, tmp_path / "week")
    assert len(week.days) == 7
    for day in week.days:
        run_sessionize(cfg, clicks, tmp_path / "daily", [date.fromisoformat(day)])
    assert day_markers(tmp_path / "week") == day_markers(tmp_path / "daily")
    files_before, markers_before = _files(tmp_path / "week"), day_markers(tmp_path / "week")
    run_sessionize(cfg, clicks, tmp_path / "week")
    assert _files(tmp_path / "week") == files_before
    assert day_markers(tmp_path / "week") == markers_before


BAD_KINDS = {
    "missing_user_id": lambda row: {**row, "user_id": None},
    "missing_item_id": lambda row: {**row, "item_id": None},
    "missing_event": lambda row: {**row, "event": None},
    "unknown_event": lambda row: {**row, "event": "hover"},
    "ts_out_of_range": lambda row: {**row, "ts": datetime(1999, 12, 31, tzinfo=UTC)},
    "id_too_long": lambda row: {**row, "item_id": "x" * 300},
}


def test_one_percent_of_each_bad_kind_is_quarantined_exactly(spark, tmp_path: Path) -> None:
    from embedding.devtools.generate import generate_clicklog

    log = tmp_path / "gen"
    generate_clicklog(log, events=10_000, days=2, profile="standard", seed=3)
    rows = pq.read_table(log, columns=["user_id", "ts", "item_id", "event", "market"]).to_pylist()
    rng = np.random.default_rng(0)
    per_kind = len(rows) // 100
    picked = rng.choice(len(rows), size=per_kind * len(BAD_KINDS), replace=False)
    expected = []
    for kind, chunk in zip(BAD_KINDS, np.split(picked, len(BAD_KINDS)), strict=True):
        for i in chunk:
            rows[i] = BAD_KINDS[kind](rows[i])
            expected.append((kind, rows[i]["user_id"], rows[i]["item_id"], rows[i]["event"]))
    dirty = write_log(tmp_path / "dirty" / "part-0.parquet", rows).parent
    days = [date(2026, 1, 1), date(2026, 1, 2)]

    with pytest.raises(InputError, match=r"failed validation .* above ingest.max_bad_share=0.05"):
        run_sessionize(small_config(**PLAIN), dirty, tmp_path / "refused", days)
    assert not (tmp_path / "refused" / "sessions").exists()

    result = run_sessionize(small_config(**{**PLAIN, "ingest.max_bad_share": 0.1}), dirty,
                            tmp_path / "work", days)  # fmt: skip
    assert result.quarantined_by_reason == dict.fromkeys(sorted(BAD_KINDS), per_kind)
    quarantined = pq.read_table(result.quarantine_path).to_pylist()
    got = [(r["reason"], r["user_id"], r["item_id"], r["event"]) for r in quarantined]
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert result.rows_read == len(rows) and result.events_valid == len(rows) - len(expected)


def test_a_run_on_a_log_that_lacks_a_complete_day_keeps_that_day(spark, tmp_path: Path) -> None:
    """A CLI run or sweep on a partial log must not blank a day the work folder holds."""
    one_day = 86_400
    full = [ev("u", d * one_day + s, f"I{d}{s}") for d in range(3) for s in (0, 60, 120)]
    _, _, work = run(tmp_path, full)
    before = json.loads((work / "_days" / "2026-01-02.json").read_text())
    kept_sessions = load_table(work, "sessions", [date(2026, 1, 2)]).to_pylist()
    assert before["n_events"] == 3 and len(kept_sessions) == 1

    lacking_day_2 = [row for row in full if row["ts"].date() != date(2026, 1, 2)]
    result, _, _ = run(tmp_path, lacking_day_2)  # days 1..3 again, nothing on the 2nd

    after = json.loads((work / "_days" / "2026-01-02.json").read_text())
    assert after["n_events"] == 3, "a complete day was rewritten empty"
    assert after == before
    assert load_table(work, "sessions", [date(2026, 1, 2)]).to_pylist() == kept_sessions
    assert result.to_dict().get("kept_days") == ["2026-01-02"]


def test_the_row_accounting_fails_when_a_row_goes_missing() -> None:
    """Duplicates and session events are both counted from the rows: a planted loss of one row
    between them is an error, not a silent remainder (as it was when duplicates were one)."""
    from jobs.sessionize import SessionizeResult, check_accounting

    result = SessionizeResult(days=["2026-01-01"], work_dir="w", duplicates=2, events_valid=7)
    check_accounting(result, in_days_valid=9)  # 2 + 7: every row placed
    with pytest.raises(EmbeddingError, match="1 rows went missing"):
        check_accounting(result, in_days_valid=10)  # one row lost in sessionization
