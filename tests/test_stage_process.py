"""A stage in its own process: failures and kills come back as one clear error."""

import signal
from pathlib import Path

import pytest
from conftest import ROOT

from embedding.stages.stage_process import (
    StageProcessError,
    describe_exit,
    pid_file,
    run_stage_process,
)


def test_exit_codes_are_described() -> None:
    assert describe_exit(2) == "exited with 2"
    assert describe_exit(-signal.SIGKILL).startswith("killed by SIGKILL (out of memory")
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"


def test_a_failing_stage_raises_with_its_last_output_and_leaves_no_pid_file(tmp_path: Path) -> None:
    plan = {"run_dir": str(tmp_path / "run"), "version": "not-a-plan"}  # fields missing

    with pytest.raises(StageProcessError, match=r"train process [0-9]+ exited with 2") as info:
        run_stage_process("train", ROOT / "conf" / "default.yaml", [], plan)

    assert "not a readable run plan" in str(info.value)  # the child's own error line
    assert "a retry starts it again from scratch" in str(info.value)
    assert not pid_file(tmp_path / "run", "train").exists()


def test_an_unknown_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage 'evaluate'"):
        run_stage_process("evaluate", "conf.yaml", [], {"run_dir": str(tmp_path)})
