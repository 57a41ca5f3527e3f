"""The frozen quality harness's logs: how each is read and split, fixed here and nowhere else.

Nothing in this module imports the pipeline's session rules or config, so a change to the
pipeline cannot move the yardstick. Each log is split once, before any run, at one cut time:
sessions (the source's own, or a 30-minute inactivity gap per user where it has none) that
start at or after the start of its latest 20% of sessions by start time are held out; the other
sessions' rows, all source columns, are the input the pipeline sees. Using a quantile of session
starts, a few far-off timestamps cannot move the cut.

    python -m bench.frozen_logs --out /tmp/splits     # writes <name>/input.parquet, heldout.parquet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedding import PROJECT_ROOT

logger = logging.getLogger("bench.frozen_logs")

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
HOLDOUT_SHARE = 0.2
GAP_S = 30 * 60
GENERATED_EVENTS = 200_000
GENERATED_DAYS = 8
GENERATED_SEED = 7
TRIVAGO_ITEM_ACTIONS = (
    "interaction item image",
    "interaction item info",
    "interaction item rating",
    "interaction item deals",
    "search for item",
    "clickout item",
)


@dataclass(frozen=True)
class LogSpec:
    """How the harness reads one log: its columns, time unit and which rows are item events."""

    name: str
    item: str
    ts: str
    ts_unit: str  # "s", "ms" or "timestamp"
    session: str | None  # the source's own session id, or None: 30-min gap per user
    user: str | None
    order: str | None = None  # tie-break of equal timestamps (trivago: step)
    item_filter: tuple[str, tuple[str, ...]] | None = None  # (column, values) of item rows
    path: Path | None = None  # None: generated
    profile: str | None = None  # generator profile
    mapping: str | None = None  # the mapping-only file the pipeline needs (conf/sources/)
    purchases: bool = False


LOGS: dict[str, LogSpec] = {
    "trivago": LogSpec(
        "trivago", "reference", "timestamp", "s", "session_id", "user_id", order="step",
        item_filter=("action_type", TRIVAGO_ITEM_ACTIONS),
        path=SHARED_DATA / "trivago_100k.parquet",
        mapping="conf/sources/trivago.yaml", purchases=True,
    ),
    "yoochoose": LogSpec(
        "yoochoose", "ItemId", "Time", "s", "SessionId", None,
        path=SHARED_DATA / "yoochoose_clicks_84k.parquet", mapping="conf/sources/yoochoose.yaml",
    ),
    "globo": LogSpec(
        "globo", "click_article_id", "click_timestamp", "ms", "session_id", "user_id",
        path=SHARED_DATA / "globo_clicks_901k.parquet", mapping="conf/sources/globo.yaml",
    ),
    "standard": LogSpec("standard", "item_id", "ts", "timestamp", None, "user_id",
                        profile="standard", purchases=True),
    "sparse": LogSpec("sparse", "item_id", "ts", "timestamp", None, "user_id",
                      profile="sparse", purchases=True),
}  # fmt: skip
REAL_LOGS = ("trivago", "yoochoose", "globo")


def seconds(frame: pd.DataFrame, spec: LogSpec) -> np.ndarray:
    """Event times as float epoch seconds."""
    col = frame[spec.ts]
    if spec.ts_unit == "timestamp":
        return col.astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    values = col.astype("float64").to_numpy()
    return values / 1000.0 if spec.ts_unit == "ms" else values


def session_keys(frame: pd.DataFrame, spec: LogSpec) -> np.ndarray:
    """One int64 session key per row: the source's session, or a 30-min gap cut per user."""
    if spec.session is not None:
        return pd.factorize(frame[spec.session].astype(str))[0].astype(np.int64)
    ts = seconds(frame, spec)
    user = pd.factorize(frame[spec.user].astype(str))[0]
    order = np.lexsort((ts, user))
    su, st = user[order], ts[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (su[1:] != su[:-1]) | (st[1:] - st[:-1] > GAP_S)
    keys = np.empty(len(order), dtype=np.int64)
    keys[order] = np.cumsum(starts) - 1
    return keys


def split_frame(frame: pd.DataFrame, spec: LogSpec) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(input, held-out, facts): held out are the sessions starting at or after the cut."""
    keys = session_keys(frame, spec)
    ts = seconds(frame, spec)
    starts = pd.Series(ts).groupby(keys).min()
    cut = float(np.sort(starts.to_numpy())[int(len(starts) * (1 - HOLDOUT_SHARE))])
    held_sessions = starts.index.to_numpy()[starts.to_numpy() >= cut]
    held = np.isin(keys, held_sessions)
    facts = {
        "rows": len(frame),
        "sessions": len(starts),
        "heldout_sessions": len(held_sessions),
        "input_rows": int((~held).sum()),
        "heldout_rows": int(held.sum()),
        "cut_ts": cut,
        "cut": pd.Timestamp(cut, unit="s", tz="UTC").isoformat(),
    }
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True), facts


def read_source(spec: LogSpec, tmp: Path) -> pd.DataFrame:
    if spec.path is not None:
        return pq.read_table(spec.path).to_pandas()
    from embedding.devtools.generate import generate_clicklog

    out = tmp / f"generated_{spec.name}"
    generate_clicklog(out, GENERATED_EVENTS, GENERATED_DAYS, spec.profile, GENERATED_SEED,
                      date(2026, 1, 1))  # fmt: skip
    files = sorted(out.glob("dt=*/*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.to_pandas().sort_values([spec.user, spec.ts], kind="stable").reset_index(drop=True)


def write_split(spec: LogSpec, out: Path) -> dict:
    """Split one log into ``out/input.parquet`` and ``out/heldout.parquet`` (once: a split
    already there is reused when its facts file matches)."""
    facts_file = out / "split.json"
    if facts_file.is_file() and (out / "input.parquet").is_file():
        return json.loads(facts_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        frame = read_source(spec, Path(tmp))
    inputs, held, facts = split_frame(frame, spec)
    for name, part in (("input", inputs), ("heldout", held)):
        table = pa.Table.from_pandas(part, preserve_index=False)
        pq.write_table(table, out / f"{name}.parquet", coerce_timestamps="us")
    digest = hashlib.sha256((out / "heldout.parquet").read_bytes()).hexdigest()[:16]
    facts = {"log": spec.name, **facts, "heldout_sha256": digest}
    facts_file.write_text(json.dumps(facts, indent=1))
    logger.info("split %s: %s", spec.name, facts)
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--logs", default=",".join(LOGS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in args.logs.split(","):
        print(json.dumps(write_split(LOGS[name], args.out / name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
