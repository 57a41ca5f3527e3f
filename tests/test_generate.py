"""Tests for the synthetic click-log generator: real Parquet files in tmp_path, small sizes."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from embedding.core.errors import InputError
from embedding.devtools.generate import PROFILES, GenerateResult, generate_clicklog

START = datetime.date(2026, 1, 1)
GAP_US = 30 * 60 * 1_000_000  # the pipeline's default sessionization gap


def read_clicks(out_dir: Path) -> pa.Table:
    """The day partitions in ts order, as any reader of the folder would see them."""
    parts = sorted(out_dir.glob("dt=*/part-0.parquet"))
    return pa.concat_tables(pq.read_table(p) for p in parts)


def file_bytes(out_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}


def cut_sessions(clicks: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(row order by user then ts, session number per ordered row), cut at a 30 min pause."""
    users = clicks["user_id"].to_numpy(zero_copy_only=False)
    ts_us = clicks["ts"].cast(pa.int64()).to_numpy()
    order = np.lexsort((ts_us, users))
    users, ts_us = users[order], ts_us[order]
    is_new = np.ones(len(order), dtype=bool)
    is_new[1:] = (users[1:] != users[:-1]) | (np.diff(ts_us) > GAP_US)
    return order, np.cumsum(is_new) - 1


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerateResult, pa.Table]:
    result = generate_clicklog(tmp_path_factory.mktemp("medium") / "log", events=50_000, days=4)
    return result, read_clicks(result.out_dir)


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    first = generate_clicklog(tmp_path / "a", events=3_000, days=3, seed=11)
    second = generate_clicklog(tmp_path / "b", events=3_000, days=3, seed=11)
    assert file_bytes(first.out_dir) == file_bytes(second.out_dir)
    assert first.n_sessions == second.n_sessions


def test_different_seed_gives_different_log(tmp_path: Path) -> None:
    first = generate_clicklog(tmp_path / "a", events=3_000, days=3, seed=11)
    second = generate_clicklog(tmp_path / "b", events=3_000, days=3, seed=12)
    assert read_clicks(first.out_dir) != read_clicks(second.out_dir)
    first_truth = pq.read_table(first.out_dir / "_ground_truth.parquet")
    second_truth = pq.read_table(second.out_dir / "_ground_truth.parquet")
    assert first_truth["item_id"] != second_truth["item_id"]


@pytest.mark.parametrize(("events", "days"), [(1, 1), (7, 2), (1_001, 3)])
def test_exact_event_count(tmp_path: Path, events: int, days: int) -> None:
    result = generate_clicklog(tmp_path / "log", events=events, days=days)
    assert result.n_events == events
    assert read_clicks(result.out_dir).num_rows == events
    # A folder reader skips the underscore files and sees the day partitions only.
    assert pq.read_table(result.out_dir).num_rows == events


def test_schema_partitions_and_time_window(medium: tuple[GenerateResult, pa.Table]) -> None:
    result, clicks = medium
    expected_days = [(START + datetime.timedelta(days=d)).isoformat() for d in range(4)]
    assert result.days == expected_days
    assert sorted(p.name for p in result.out_dir.glob("dt=*")) == [f"dt={d}" for d in expected_days]
    assert clicks.schema == pa.schema(
        [
            ("user_id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("item_id", pa.string()),
            ("event", pa.string()),
            ("market", pa.string()),
        ]
    )
    for day in expected_days:
        part = pq.read_table(result.out_dir / f"dt={day}" / "part-0.parquet")
        dates = set(pc.unique(pc.cast(part["ts"], pa.date32())).to_pylist())
        assert dates == {datetime.date.fromisoformat(day)}
    ts_us = clicks["ts"].cast(pa.int64()).to_numpy()
    users = clicks["user_id"].to_numpy(zero_copy_only=False)
    keys = list(zip(ts_us.tolist(), users.tolist(), strict=True))
    assert keys == sorted(keys), "rows are sorted by (ts, user_id)"
    assert set(clicks["event"].to_pylist()) == {"view", "click", "book"}
    assert all(m.startswith("m") and len(m) == 3 for m in pc.unique(clicks["market"]).to_pylist())


def test_sessions_are_recoverable_and_booked_share(medium: tuple[GenerateResult, pa.Table]) -> None:
    result, clicks = medium
    order, session = cut_sessions(clicks)
    n_sessions = int(session[-1]) + 1
    assert n_sessions == result.n_sessions, "gaps < 30 min inside, >= 1 h between sessions"
    is_book = clicks["event"].to_numpy(zero_copy_only=False)[order] == "book"
    booked = np.unique(session[is_book])
    assert len(booked) == result.n_booked_sessions == int(is_book.sum())
    assert 0.10 <= len(booked) / n_sessions <= 0.20
    last_of_session = np.r_[session[1:] != session[:-1], True]
    assert np.all(last_of_session[is_book]), "a booking ends its session"
    assert 6 <= len(order) / n_sessions <= 10, "mean session length about 8"


def test_same_cluster_share_of_consecutive_pairs(medium: tuple[GenerateResult, pa.Table]) -> None:
    result, clicks = medium
    truth = pq.read_table(result.out_dir / "_ground_truth.parquet")
    cluster_of = dict(zip(truth["item_id"].to_pylist(), truth["cluster"].to_pylist(), strict=True))
    order, session = cut_sessions(clicks)
    ts = clicks["ts"].cast(pa.int64()).to_numpy()[order]
    dwell_s = np.r_[(ts[1:] - ts[:-1]) / 1e6, np.inf]
    dwell_s[np.r_[session[1:] != session[:-1], True]] = np.inf  # last event of a session
    browsing = dwell_s >= 30  # accidental clicks are left within seconds
    assert 0.05 <= 1 - browsing.mean() <= 0.12, "about 10% accidental clicks per step"
    items = clicks["item_id"].to_numpy(zero_copy_only=False)[order][browsing]
    session = session[browsing]
    clusters = np.array([cluster_of[i] for i in items])
    in_session = session[1:] == session[:-1]
    same_cluster = clusters[1:][in_session] == clusters[:-1][in_session]
    assert 0.5 <= same_cluster.mean() <= 0.7
    repeats = items[1:][in_session] == items[:-1][in_session]
    assert repeats.mean() < 0.05, "consecutive repeats of an item are rare"


def test_ground_truth_covers_every_item(medium: tuple[GenerateResult, pa.Table]) -> None:
    result, clicks = medium
    truth = pq.read_table(result.out_dir / "_ground_truth.parquet")
    assert truth.schema.names == ["item_id", "market", "cluster", "weight"]
    assert truth.num_rows == PROFILES["standard"].n_items == 20_000
    assert len(set(truth["item_id"].to_pylist())) == truth.num_rows
    seen = set(pc.unique(clicks["item_id"]).to_pylist())
    assert len(seen) == result.n_items
    assert seen <= set(truth["item_id"].to_pylist())
    market_of = dict(zip(truth["item_id"].to_pylist(), truth["market"].to_pylist(), strict=True))
    pairs = zip(clicks["item_id"].to_pylist(), clicks["market"].to_pylist(), strict=True)
    assert all(market_of[item] == market for item, market in pairs)
    cluster_names = truth["cluster"].to_pylist()
    assert all(
        c.startswith(m + "/c")
        for c, m in zip(cluster_names, truth["market"].to_pylist(), strict=True)
    )
    assert len(set(cluster_names)) == 20 * 50


def test_profile_json_records_parameters(medium: tuple[GenerateResult, pa.Table]) -> None:
    result, _ = medium
    described = json.loads((result.out_dir / "_profile.json").read_text())
    assert described["profile"] == "standard"
    assert (described["events"], described["days"], described["seed"]) == (50_000, 4, 7)
    assert described["start"] == "2026-01-01"
    assert described["params"]["zipf_exponent"] == 1.1
    assert described["params"]["clusters_per_market"] == 50
    realised = described["realised"]
    assert realised["sessions"] == result.n_sessions
    assert realised["booked_sessions"] == result.n_booked_sessions
    assert realised["items_seen"] == result.n_items
    assert 0.0 <= realised["share_items_seen_lt5"] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": 0, "days": 1}, "events"),
        ({"events": 10, "days": 0}, "days"),
        ({"events": 10, "days": 1, "profile": "huge"}, "profile"),
        ({"events": 10, "days": 1, "start": datetime.datetime(2026, 1, 1)}, "start"),
    ],
)
def test_bad_arguments_raise_input_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        generate_clicklog(tmp_path / "log", **kwargs)
    assert not (tmp_path / "log").exists()


def test_non_empty_out_dir_is_refused_and_empty_one_is_used(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not an empty folder"):
        generate_clicklog(tmp_path / "full", events=10, days=1)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    (tmp_path / "empty").mkdir()
    result = generate_clicklog(tmp_path / "empty", events=10, days=1)
    assert read_clicks(result.out_dir).num_rows == 10


def test_sparse_profile_has_a_long_tail(tmp_path: Path) -> None:
    result = generate_clicklog(tmp_path / "log", events=200_000, days=3, profile="sparse")
    truth = pq.read_table(result.out_dir / "_ground_truth.parquet", columns=["item_id"])
    assert truth.num_rows == 200_000
    counts = pc.value_counts(read_clicks(result.out_dir)["item_id"]).field("counts").to_numpy()
    assert len(counts) == result.n_items
    assert np.mean(counts < 5) > 0.5, "most seen items appear fewer than 5 times"
