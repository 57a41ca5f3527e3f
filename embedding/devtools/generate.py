"""Synthetic click logs with a known item structure, for tests, benchmarks and quality checks.

Input: a size (``events``, ``days``), a ``profile`` name and a ``seed``; nothing is read. Output:
a click log as in CONTRACTS §1, Parquet partitioned by day (``dt=YYYY-MM-DD/part-0.parquet`` with
``user_id``, ``ts``, ``item_id``, ``event``, ``market``, rows sorted by ``(ts, user_id)``), plus
the ground truth the log was drawn from (``_ground_truth.parquet``: item, market, cluster, Zipf
weight) and ``_profile.json`` (parameters and realised counts). Items sit in markets and clusters;
sessions browse mostly within one cluster, so a good embedding puts a cluster's items together and
the ground truth says how well it did. The same arguments give byte-identical files.

Usage::

    result = generate_clicklog(Path("data/synthetic"), events=200_000, days=7)
    python -m embedding generate --out data/synthetic --events 200000 --days 7 --profile sparse
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import random
import shutil
import time
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.core.errors import InputError
from embedding.devtools.catalogue import (
    PROFILES,
    Catalogue,
    Profile,
    build_catalogue,
    build_ground_truth,
)

logger = logging.getLogger(__name__)

EVENT_NAMES = ("view", "click", "book")  # event codes 0, 1, 2
VIEW, CLICK, BOOK = 0, 1, 2
PROGRESS_EVERY = 1_000_000  # events between progress log lines
GROUND_TRUTH_FILE = "_ground_truth.parquet"  # leading "_": dataset readers skip it
PROFILE_FILE = "_profile.json"
PART_FILE = "part-0.parquet"
US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S

CLICK_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("item_id", pa.string()),
        ("event", pa.string()),
        ("market", pa.string()),
    ]
)


@dataclass(frozen=True)
class GenerateResult:
    """What ``generate_clicklog`` wrote; ``n_items`` counts distinct items in the log."""

    out_dir: Path
    n_events: int
    n_sessions: int
    n_booked_sessions: int
    n_items: int
    days: list[str]  # ISO dates of the window, one partition each


@dataclass(frozen=True)
class SimulatedClicks:
    """Events in generation order (by user, then time); ``ts_us`` counts from the window start."""

    user: np.ndarray  # (n,) int64 user index
    ts_us: np.ndarray  # (n,) int64 microseconds since start 00:00 UTC
    item: np.ndarray  # (n,) int64 catalogue index
    event: np.ndarray  # (n,) int8 code into EVENT_NAMES
    n_users: int
    n_sessions: int
    n_booked_sessions: int
    n_pairs: int  # consecutive event pairs inside sessions
    n_same_cluster_pairs: int


def _draw(cum: Sequence[float], r: float) -> int:
    """Index i with cum[i-1] <= r < cum[i]; r is uniform on [0, cum[-1])."""
    return min(bisect_right(cum, r), len(cum) - 1)


def _draw_other(cum: Sequence[float], current: int, rand: float) -> int:
    """Index != current, proportional to weight (cum holds the running sums); rand in [0, 1)."""
    if len(cum) == 1:
        return current
    before = cum[current - 1] if current else 0.0
    own = cum[current] - before
    r = rand * (cum[-1] - own)
    if r >= before:
        r += own
    picked = _draw(cum, r)
    return picked if picked != current else (current + 1) % len(cum)


def simulate_clicks(catalogue: Catalogue, events: int, days: int, seed: int) -> SimulatedClicks:
    """Simulate users' sessions until exactly ``events`` events fall inside ``days`` days.

    Each user's sessions follow each other (a pause of at least ``min_pause_s``) from a random
    offset up to the window's end; users are added until the count is reached, and the last
    session is trimmed to it. A session cut by the window end or the trim may be shorter than
    ``min_session_events`` (but has at least one event) and loses its booking if it had one.
    Items are drawn by weight within the current cluster, excluding the previous item, so
    consecutive repeats do not occur (unless a cluster holds a single item).
    """
    profile = catalogue.profile
    per_cluster, per_market = profile.items_per_cluster, profile.clusters_per_market
    weights = catalogue.item_weights.tolist()
    item_cum = [
        list(accumulate(weights[c * per_cluster : (c + 1) * per_cluster]))
        for c in range(profile.n_clusters)
    ]
    cluster_weights = [cum[-1] for cum in item_cum]
    cluster_cum = [
        list(accumulate(cluster_weights[m * per_market : (m + 1) * per_market]))
        for m in range(profile.n_markets)
    ]
    market_cum = list(accumulate(cum[-1] for cum in cluster_cum))

    rng = random.Random(seed)
    rand, expo = rng.random, rng.expovariate
    extra_events = profile.mean_session_events - profile.min_session_events
    log_q = math.log(extra_events / (extra_events + 1.0)) if extra_events > 0 else 0.0
    gap_rate = 1.0 / (profile.mean_gap_s - profile.min_gap_s)
    min_gap_s, p_accidental = profile.min_gap_s, profile.p_accidental
    dwell_lo, dwell_hi = profile.accidental_dwell_s
    pause_extra_s = profile.mean_pause_s - profile.min_pause_s
    pause_rate = 1.0 / pause_extra_s if pause_extra_s > 0 else 0.0
    p_stay = profile.p_stay_cluster
    p_move = profile.p_stay_cluster + profile.p_switch_cluster
    min_len, max_gap_s = profile.min_session_events, profile.max_gap_s
    min_pause_s = profile.min_pause_s
    book_share, click_share = profile.book_share, profile.click_share
    window_us = days * US_PER_DAY

    users, stamps, items, codes = array("q"), array("q"), array("q"), array("b")
    n = n_users = n_sessions = n_booked = n_pairs = n_same = 0
    next_report, started = PROGRESS_EVERY, time.perf_counter()

    def draw_item(cluster: int, previous: int) -> int:
        # Never the previous item: Zipf puts about half a cluster's weight on its top item, so
        # "re-draw once if the same" would still repeat ~1 pair in 3 within a cluster.
        cum, base = item_cum[cluster], cluster * per_cluster
        if base <= previous < base + per_cluster:
            return base + _draw_other(cum, previous - base, rand())
        return base + _draw(cum, rand() * cum[-1])

    while n < events:
        user, n_users = n_users, n_users + 1
        home = _draw(market_cum, rand() * market_cum[-1])
        t_us = int(rand() * profile.mean_pause_s * US_PER_S)  # ~ stationary first offset
        while n < events and t_us < window_us:
            full_length = min_len + (int(math.log(1.0 - rand()) / log_q) if log_q else 0)
            book_at = full_length - 1 if rand() < book_share else -1  # booking ends the session
            length = min(full_length, events - n)  # trim the last session to the exact count
            market = home
            local = _draw(cluster_cum[market], rand() * cluster_cum[market][-1])
            cluster = market * per_market + local
            item = draw_item(cluster, -1)
            k = 0
            while True:
                if k == book_at:
                    code = BOOK
                else:
                    code = CLICK if rand() < click_share else VIEW
                users.append(user)
                stamps.append(t_us)
                items.append(item)
                codes.append(code)
                k += 1
                if k == length:
                    break
                gap_s = min(max_gap_s, min_gap_s + expo(gap_rate))
                t_next = t_us + int(gap_s * US_PER_S)
                if t_next >= window_us:
                    break
                t_us = t_next
                # an accidental click: a random item of the market, left within seconds
                if k + 1 < length and (book_at < 0 or k + 1 < book_at) and rand() < p_accidental:
                    noise = market * per_market + _draw(
                        cluster_cum[market], rand() * cluster_cum[market][-1]
                    )
                    users.append(user)
                    stamps.append(t_us)
                    items.append(draw_item(noise, item))
                    codes.append(CLICK)
                    k += 1
                    t_us += int((dwell_lo + rand() * (dwell_hi - dwell_lo)) * US_PER_S)
                    if t_us >= window_us:
                        break
                previous_cluster = cluster
                u = rand()
                if k != book_at and u >= p_stay:  # a booking stays in the browsed cluster
                    if u < p_move:
                        local = _draw_other(cluster_cum[market], local, rand())
                    else:
                        market = _draw_other(market_cum, market, rand())
                        local = _draw(cluster_cum[market], rand() * cluster_cum[market][-1])
                    cluster = market * per_market + local
                item = draw_item(cluster, item)
                n_pairs += 1
                n_same += cluster == previous_cluster
            n += k
            n_sessions += 1
            n_booked += code == BOOK
            t_us += int((min_pause_s + (expo(pause_rate) if pause_rate else 0.0)) * US_PER_S)
            if n >= next_report:
                elapsed = time.perf_counter() - started
                logger.info(
                    "simulated %d of %d events (%.0f events/s)", n, events, n / max(elapsed, 1e-9)
                )
                next_report += PROGRESS_EVERY

    return SimulatedClicks(
        user=np.frombuffer(users, dtype=np.int64).copy(),
        ts_us=np.frombuffer(stamps, dtype=np.int64).copy(),
        item=np.frombuffer(items, dtype=np.int64).copy(),
        event=np.frombuffer(codes, dtype=np.int8).copy(),
        n_users=n_users,
        n_sessions=n_sessions,
        n_booked_sessions=n_booked,
        n_pairs=n_pairs,
        n_same_cluster_pairs=n_same,
    )


def build_click_table(
    clicks: SimulatedClicks, catalogue: Catalogue, start: datetime.date
) -> pa.Table:
    """The click log as one table in contract columns, sorted by (ts, user_id)."""
    order = np.lexsort((clicks.user, clicks.ts_us))  # primary key last: ts, then user
    width = max(6, len(str(clicks.n_users - 1)))  # fixed width: string order == number order
    user_names = pa.array([f"u{u:0{width}d}" for u in range(clicks.n_users)], pa.string())
    item_names = pa.array(catalogue.item_ids(), pa.string())
    market_names = pa.array(catalogue.market_names(), pa.string())
    event_names = pa.array(EVENT_NAMES, pa.string())
    items_per_market = catalogue.profile.clusters_per_market * catalogue.profile.items_per_cluster
    item = clicks.item[order]
    start_us = _midnight_us(start)
    columns = [
        pc.take(user_names, pa.array(clicks.user[order])),
        pa.array(clicks.ts_us[order] + start_us, pa.timestamp("us", tz="UTC")),
        pc.take(item_names, pa.array(item)),
        pc.take(event_names, pa.array(clicks.event[order])),
        pc.take(market_names, pa.array(item // items_per_market)),
    ]
    return pa.Table.from_arrays(columns, schema=CLICK_SCHEMA)


def _midnight_us(day: datetime.date) -> int:
    midnight = datetime.datetime.combine(day, datetime.time(0), tzinfo=datetime.UTC)
    return int(midnight.timestamp()) * US_PER_S


def _check_arguments(
    out_dir: Path, events: int, days: int, profile: str, start: datetime.date
) -> Profile:
    if isinstance(events, bool) or not isinstance(events, int) or events < 1:
        raise InputError(f"events must be a whole number >= 1, got {events!r}")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InputError(f"days must be a whole number >= 1, got {days!r}")
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    if isinstance(start, datetime.datetime) or not isinstance(start, datetime.date):
        raise InputError(
            f"start must be a datetime.date (the window opens 00:00 UTC), got {start!r}"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not an empty folder; pick a new out_dir")
    return PROFILES[profile]


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, coerce_timestamps="us", allow_truncated_timestamps=True)


def _write_days(
    tmp_dir: Path, clicks: SimulatedClicks, clicks_table: pa.Table, day_names: list[str]
) -> None:
    """One ``dt=<day>/part-0.parquet`` per day under a fresh ``tmp_dir`` (empty days too)."""
    bounds = np.searchsorted(np.sort(clicks.ts_us), np.arange(len(day_names) + 1) * US_PER_DAY)
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # left over from an interrupted run of generate_clicklog
    tmp_dir.mkdir(parents=True)
    for d, day in enumerate(day_names):
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        if lo == hi:
            logger.warning("no events on %s: its partition is empty", day)
        (tmp_dir / f"dt={day}").mkdir()
        _write_parquet(clicks_table.slice(lo, hi - lo), tmp_dir / f"dt={day}" / PART_FILE)


def _describe(
    chosen: Profile,
    clicks: SimulatedClicks,
    events: int,
    days: int,
    seed: int,
    start: datetime.date,
    seen_counts: np.ndarray,
) -> dict:
    """``_profile.json``: the parameters and the realised counts."""
    params = dataclasses.asdict(chosen)
    return {
        "profile": params.pop("name"),
        "params": params,
        "events": events,
        "days": days,
        "seed": seed,
        "start": start.isoformat(),
        "realised": {
            "events": events,
            "users": clicks.n_users,
            "sessions": clicks.n_sessions,
            "booked_sessions": clicks.n_booked_sessions,
            "booked_share": round(clicks.n_booked_sessions / clicks.n_sessions, 6),
            "same_cluster_pair_share": round(
                clicks.n_same_cluster_pairs / max(clicks.n_pairs, 1), 6
            ),
            "items_total": chosen.n_items,
            "items_seen": int(seen_counts.size),
            "share_items_seen_lt5": round(float(np.mean(seen_counts < 5)), 6),
        },
    }


def generate_clicklog(
    out_dir: Path,
    events: int,
    days: int,
    profile: str = "standard",
    seed: int = 7,
    start: datetime.date = datetime.date(2026, 1, 1),
) -> GenerateResult:
    """Write a synthetic click log of exactly ``events`` events over ``days`` days from ``start``.

    The folder is written beside ``out_dir`` and renamed into place, so it appears complete.
    Every day of the window gets a partition (empty only when there are too few events).

    Raises:
        InputError: events or days < 1, an unknown profile, or ``out_dir`` not an empty folder.
    """
    out_dir = Path(out_dir)
    chosen = _check_arguments(out_dir, events, days, profile, start)
    started = time.perf_counter()

    catalogue = build_catalogue(chosen, seed)
    clicks = simulate_clicks(catalogue, events, days, seed)
    clicks_table = build_click_table(clicks, catalogue, start)
    assert clicks_table.num_rows == events

    item_counts = np.bincount(clicks.item, minlength=chosen.n_items)  # (n_items,)
    seen_counts = item_counts[item_counts > 0]
    n_items_seen = int(seen_counts.size)
    share_seen_lt5 = float(np.mean(seen_counts < 5))
    day_names = [(start + datetime.timedelta(days=d)).isoformat() for d in range(days)]

    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-generate")
    _write_days(tmp_dir, clicks, clicks_table, day_names)
    _write_parquet(build_ground_truth(catalogue), tmp_dir / GROUND_TRUTH_FILE)
    description = _describe(chosen, clicks, events, days, seed, start, seen_counts)
    text = json.dumps(description, indent=2, sort_keys=True) + "\n"
    (tmp_dir / PROFILE_FILE).write_text(text, encoding="utf-8")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        out_dir.rmdir()  # checked empty above
    tmp_dir.rename(out_dir)

    logger.info(
        "generated %d events, %d sessions (%.1f%% booked), %d users, %d of %d items seen "
        "(%.0f%% of them < 5 times), %d days, profile %s, seed %d, in %.1fs -> %s",
        events,
        clicks.n_sessions,
        100.0 * clicks.n_booked_sessions / clicks.n_sessions,
        clicks.n_users,
        n_items_seen,
        chosen.n_items,
        100.0 * share_seen_lt5,
        days,
        chosen.name,
        seed,
        time.perf_counter() - started,
        out_dir,
    )
    return GenerateResult(
        out_dir=out_dir,
        n_events=events,
        n_sessions=clicks.n_sessions,
        n_booked_sessions=clicks.n_booked_sessions,
        n_items=n_items_seen,
        days=day_names,
    )
