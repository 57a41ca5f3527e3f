"""CLI failure paths over a real subprocess (CONTRACTS §3): bad input or configuration exits 2
with one ``error:`` line on stderr, and a publish root's CURRENT is left exactly as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
OLD_CURRENT = b"20260101-deadbeef"
CLICK_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("item_id", pa.string()),
        ("event", pa.string()),
        ("market", pa.string()),
    ]
)


def run_cli(*args: str | Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "embedding", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error the CLI ends stderr with (a multi-line message fails here)."""
    lines = result.stderr.rstrip("\n").splitlines()
    assert lines, "stderr is empty"
    assert lines[-1].startswith("error: "), f"last stderr line is not the error:\n{result.stderr}"
    return lines[-1]


def assert_bad_input(result: subprocess.CompletedProcess[str], *named: str | Path) -> str:
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    for part in named:
        assert str(part) in line, f"{part!r} not named in {line!r}"
    assert "Traceback" not in result.stderr
    assert "published" not in result.stdout
    return line


@pytest.fixture
def publish_root(tmp_path: Path) -> Path:
    """A publish root that already points at a version; failed runs must leave it alone."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "CURRENT").write_bytes(OLD_CURRENT)
    return root


def assert_publish_root_untouched(root: Path) -> None:
    assert (root / "CURRENT").read_bytes() == OLD_CURRENT
    assert not (root / "versions").exists()


def test_run_missing_input_file(tmp_path: Path, publish_root: Path) -> None:
    missing = tmp_path / "no-such-clicks.parquet"
    result = run_cli("run", "--input", missing, "--publish-root", publish_root)
    line = assert_bad_input(result, missing)
    assert "not found" in line
    assert_publish_root_untouched(publish_root)


def test_run_missing_item_table(tmp_path: Path, publish_root: Path) -> None:
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("user_id,ts,item_id,event,market\nu1,1767225600,A,view,m1\n")
    missing = tmp_path / "no-such-items.parquet"
    result = run_cli("run", "--input", clicks, "--items", missing, "--publish-root", publish_root)
    line = assert_bad_input(result, missing)
    assert "item table not found" in line
    assert_publish_root_untouched(publish_root)


def test_run_empty_folder(tmp_path: Path, publish_root: Path) -> None:
    empty = tmp_path / "clicks"
    empty.mkdir()
    (empty / "_SUCCESS").write_text("")  # hidden files are not data
    result = run_cli("run", "--input", empty, "--publish-root", publish_root)
    line = assert_bad_input(result, empty)
    assert "no .parquet or .csv files" in line
    assert_publish_root_untouched(publish_root)


def test_run_csv_without_item_id_column(tmp_path: Path, publish_root: Path) -> None:
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("user_id,ts,event,market\nu1,1767225600,view,m1\nu1,1767225660,click,m1\n")
    result = run_cli("run", "--input", clicks, "--publish-root", publish_root)
    line = assert_bad_input(result, clicks, "'item_id'", "source.columns.item_id")
    assert "missing column" in line
    assert_publish_root_untouched(publish_root)


@pytest.mark.slow
def test_run_parquet_with_no_rows(tmp_path: Path, publish_root: Path) -> None:
    folder = tmp_path / "clicks"
    folder.mkdir()
    pq.write_table(CLICK_SCHEMA.empty_table(), folder / "part-0.parquet")
    result = run_cli("run", "--input", folder, "--publish-root", publish_root, timeout_s=300)
    line = assert_bad_input(result, folder)
    assert "no rows" in line
    assert_publish_root_untouched(publish_root)


def test_run_unknown_set_key(tmp_path: Path, publish_root: Path) -> None:
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("user_id,ts,item_id,event,market\nu1,1767225600,h1,view,m1\n")
    result = run_cli(
        "run", "--input", clicks, "--publish-root", publish_root, "--set", "word2vec.foo=1"
    )
    assert_bad_input(result, "word2vec.foo")
    assert_publish_root_untouched(publish_root)


def test_run_missing_config_file(tmp_path: Path, publish_root: Path) -> None:
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("user_id,ts,item_id,event,market\nu1,1767225600,h1,view,m1\n")
    conf = tmp_path / "no-such.yaml"
    result = run_cli("run", "--input", clicks, "--publish-root", publish_root, "--conf", conf)
    line = assert_bad_input(result, conf)
    assert "config file not found" in line
    assert_publish_root_untouched(publish_root)


def test_run_invalid_yaml_config_is_one_line(tmp_path: Path, publish_root: Path) -> None:
    conf = tmp_path / "broken.yaml"
    conf.write_text("word2vec:\n  epochs: [1, 2\n")
    result = run_cli("run", "--input", tmp_path, "--publish-root", publish_root, "--conf", conf)
    assert_bad_input(result, conf)


def test_neighbors_without_current_version(tmp_path: Path) -> None:
    root = tmp_path / "empty-root"
    root.mkdir()
    result = run_cli("neighbors", "X", "--publish-root", root)
    line = assert_bad_input(result, root)
    assert "no CURRENT version" in line


def test_generate_zero_events(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = run_cli("generate", "--out", out, "--events", "0", "--days", "2")
    line = assert_bad_input(result, "events")
    assert "got 0" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not a readable run plan"), ("{not json", "not a readable run plan"),
     ('{"version": "x"}', "not a readable run plan")],
)  # fmt: skip
def test_stage_with_a_bad_plan_is_a_clear_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    plan = tmp_path / "train.plan.json"
    if content is not None:
        plan.write_text(content)

    out = run_cli("stage", "train", "--plan", plan)

    assert out.returncode == 2, out.stderr
    assert message in out.stderr and str(plan) in out.stderr
