"""Zero-config runs (``python -m embedding run --input LOG --publish-root DIR``, no config) on
logs unlike the generator's, and the frozen harness's negative control.

Each run is the real CLI in a subprocess over real Parquet: the first 15k rows of the yoochoose
log (sessions, no user id, no event column, no market, no purchases), a log whose events are
all seconds apart, and one with a handful of rows dated years later. Each must publish.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.frozen_eval import evaluate, fit_training, make_cases
from bench.frozen_logs import LogSpec, split_frame
from tests.conftest import SHARED_DATA
from tests.test_cli import run_cli

pytestmark = pytest.mark.slow

YOOCHOOSE = SHARED_DATA / "yoochoose_clicks_84k.parquet"
YOO_SPEC = LogSpec("yoochoose-15k", "item_id", "ts", "s", "session_id", None)
SALT = "zero-config-test-salt"


def run_zero_config(log: Path, root: Path, *extra: str):
    import os

    os.environ["EMBEDDING_USER_SALT"] = SALT
    return run_cli("run", "--input", log, "--publish-root", root, *extra, timeout_s=400)


def published(root: Path) -> tuple[str, dict, pa.Table]:
    version = (root / "CURRENT").read_text().strip()
    folder = root / "versions" / version
    return (
        version,
        json.loads((folder / "manifest.json").read_text()),
        pq.read_table(folder / "item_vectors.parquet"),
    )


@pytest.fixture(scope="module")
def yoochoose_split(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first 15k yoochoose rows in canonical names, split as the harness splits a log."""
    table = pq.read_table(YOOCHOOSE).slice(0, 15_000)
    frame = table.rename_columns(["session_id", "item_id", "ts"]).to_pandas()
    inputs, held, facts = split_frame(frame, YOO_SPEC)
    folder = tmp_path_factory.mktemp("yoo")
    pq.write_table(pa.Table.from_pandas(inputs, preserve_index=False), folder / "input.parquet")
    return {"folder": folder, "input": inputs, "heldout": held, "facts": facts}


@pytest.fixture(scope="module")
def yoochoose_run(yoochoose_split: dict) -> dict:
    root = yoochoose_split["folder"] / "publish"
    result = run_zero_config(yoochoose_split["folder"] / "input.parquet", root)
    return {"result": result, "root": root}


def test_yoochoose_rows_publish_with_no_config(yoochoose_run: dict) -> None:
    result = yoochoose_run["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "published:" in result.stdout
    _, manifest, vectors = published(yoochoose_run["root"])
    assert vectors.num_rows > 1000
    # no market, no event column, no user id: unused and said once
    assert "has no user_id, event, market" in result.stderr
    assert manifest["params"]["source"]["columns"]["market"] == "market"  # config as written
    resolved = manifest["word2vec"]["resolved"]
    assert sorted(resolved["derived_from_corpus"]["derived"]) == ["epochs", "sample",
                                                                  "vector_size"]  # fmt: skip
    assert resolved["sample"] > 3e-5  # the fixed share would down-sample every item here
    # the gate's reason names the bootstrap bound, and the count baselines sit beside it
    assert "lower bound" in manifest["gate"]["reason"]
    chosen = manifest["metrics"]["published"]
    assert set(manifest["metrics"]["vs_baselines"][chosen]) == {"popularity", "cooccurrence",
                                                                "ppmi_svd"}  # fmt: skip
    assert manifest["metrics"]["lift_ci"][chosen]["lower"] > 0


def test_shuffled_ids_score_at_popularity_or_below_and_the_gate_refuses_them(
    yoochoose_split: dict, yoochoose_run: dict
) -> None:
    """The negative control: the same vectors with their ids shuffled rank the held-out
    next items no better than popularity in the frozen evaluator, and the pipeline's own gate
    refuses them with exit code 3."""
    from bench.bench_quality import gate_on_shuffled

    assert yoochoose_run["result"].returncode == 0
    _, manifest, table = published(yoochoose_run["root"])
    training = fit_training(yoochoose_split["input"], YOO_SPEC)
    cases = make_cases(yoochoose_split["heldout"], YOO_SPEC, training)
    assert len(cases.a) > 500
    ids = np.array(table.column("item_id").to_pylist(), dtype=object)
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    scored = evaluate(ids, vectors, training, cases, seed=1)
    pop = scored["popularity"]["all"]["hr@10"]
    assert scored["shuffled_control"]["all"]["hr@10"] <= pop
    assert scored["published"]["all"]["hr@10"] > 2 * pop
    control = gate_on_shuffled(YOO_SPEC, yoochoose_run["root"], manifest, 1, [])
    assert control["exit_code"] == 3, control
    assert "not > 0" in control["reason"]


def _seconds_apart_log(tmp_path: Path) -> pd.DataFrame:
    """A generated log whose sessions' events are all 3 s apart (sessions 2 hours apart)."""
    from embedding.devtools.generate import generate_clicklog

    out = tmp_path / "gen"
    generate_clicklog(out, events=30_000, days=4, profile="standard", seed=11)
    frame = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("dt=*/*.parquet"))])
    frame = frame.select(["user_id", "ts", "item_id", "event", "market"]).to_pandas()
    frame = frame.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    ts = frame["ts"].astype("int64").to_numpy() // 1000  # microseconds -> ms (any unit works)
    new_session = np.r_[True, (frame["user_id"].to_numpy()[1:] != frame["user_id"].to_numpy()[:-1])
                        | (np.diff(ts) > 30 * 60 * 1000)]  # fmt: skip
    session_no = np.cumsum(new_session)
    position = frame.groupby(session_no).cumcount().to_numpy()
    start = frame["ts"].groupby(session_no).transform("min")
    frame["ts"] = start + pd.to_timedelta(position * 3, unit="s")
    return frame


def test_a_log_of_events_seconds_apart_publishes(tmp_path: Path) -> None:
    frame = _seconds_apart_log(tmp_path)
    gaps = frame.groupby("user_id")["ts"].diff().dropna().dt.total_seconds()
    assert (gaps[gaps < 1800] == 3).all()
    log = tmp_path / "fast.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), log, coerce_timestamps="us")
    result = run_zero_config(log, tmp_path / "publish")
    assert result.returncode == 0, result.stderr[-3000:]
    _, manifest, _ = published(tmp_path / "publish")
    assert manifest["ingest"]["short_dwell_dropped"] == 0
    assert manifest["ingest"]["events_valid"] == len(frame)


def test_rows_dated_years_later_are_quarantined_and_counted(
    yoochoose_split: dict, tmp_path: Path
) -> None:
    frame = yoochoose_split["input"].copy()
    late = frame.head(5).copy()
    late["ts"] = late["ts"] + timedelta(days=3 * 365).total_seconds()
    log = tmp_path / "with_late_rows.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat([frame, late]), preserve_index=False), log)
    result = run_zero_config(log, tmp_path / "publish")
    assert result.returncode == 0, result.stderr[-3000:]
    version, manifest, _ = published(tmp_path / "publish")
    ingest = manifest["ingest"]
    assert ingest["quarantined_by_reason"] == {"ts_outlier": 5}
    assert "quarantined 5" in result.stdout
    last_day = pd.Timestamp(frame["ts"].max(), unit="s").strftime("%Y%m%d")
    assert version.startswith(last_day)  # the late rows neither name the version ...
    assert manifest["data_interval"]["end"] <= "2014-04-09"  # ... nor stretch the window
    quarantine = pq.read_table(ingest["quarantine_path"]).to_pandas()
    assert len(quarantine) == 5 and set(quarantine["reason"]) == {"ts_outlier"}


def test_a_mapping_file_with_other_keys_is_refused(yoochoose_split: dict, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("source:\n  columns: {item_id: item_id}\nword2vec:\n  epochs: 3\n")
    result = run_zero_config(yoochoose_split["folder"] / "input.parquet", tmp_path / "p",
                             "--source", mapping)  # fmt: skip
    assert result.returncode == 2
    assert "maps columns and events only" in result.stderr
    assert "word2vec" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "p" / "CURRENT").exists()


def test_a_log_with_neither_user_nor_session_column_names_both(tmp_path: Path) -> None:
    log = tmp_path / "nouser.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "ts": [1.0e9, 1.0e9 + 5]}), log)
    result = run_zero_config(log, tmp_path / "p")
    assert result.returncode == 2
    line = result.stderr.splitlines()[-1]
    assert "user_id" in line and "session_id" in line
