"""A five-point chaos run (``make chaos`` at small scale): the CLI pipeline SIGKILLed at five
points in a row on the same folders (Spark job, fine-tune, index build, just before the version's
rename, just before CURRENT moves), then rerun to the end, must leave what one undisturbed run
leaves: the same CURRENT, version ids, day markers, vectors content and index bytes, and no
scratch. Real processes, real Spark, real files."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bench import bench_chaos as chaos

pytestmark = pytest.mark.slow

POINTS = (
    "sessionize.committing",
    "finetune.epoch",
    "publish.index",
    "publish.before_rename",
    "publish.before_current",
)


def test_five_kills_in_a_row_then_a_rerun_end_in_the_undisturbed_state(tmp_path: Path) -> None:
    setup = chaos.prepare(tmp_path, events=8000, days=2, with_dag=False)
    baseline = chaos.baseline_case(setup, "cli")
    assert baseline["current"] is not None and baseline["versions"]

    case = tmp_path / "killed"
    case.mkdir()
    chaos._conf(setup, case)
    for point in POINTS:
        code = chaos.run(setup, case, "cli", f"{point}.log", kill_at=point)
        assert code == -signal.SIGKILL, (point, (case / f"{point}.log").read_text()[-2000:])
    # the last kill left a complete version that CURRENT does not name yet
    assert chaos.snapshot(case)["current"] is None
    assert chaos.run(setup, case, "cli", "rerun.log") == 0, (case / "rerun.log").read_text()[-2000:]

    assert chaos.differences(baseline, chaos.snapshot(case)) == []
    assert chaos.leftovers(case) == []
