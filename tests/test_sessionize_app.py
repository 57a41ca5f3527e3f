"""The sessionize job launched as an application of its own (``embedding.stages.sessionize_app``):
``embedding`` never imports ``jobs``, so the CLI's ``run`` starts ``python -m jobs.sessionize``
in a child process. Its summary comes back typed, its refusals keep their message and exit code,
a crash names how the child died, and the child works under the launcher's writer lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_config

from embedding.core.errors import InputError
from embedding.core.ingest_summary import SessionizeResult
from embedding.core.lock import HELD_ENV, exclusive, held_env
from embedding.stages import sessionize_app
from embedding.stages.plan import Paths
from embedding.stages.sessionize import sessionize_stage
from embedding.stages.stage_process import StageProcessError


def _paths(source: Path, tmp_path: Path) -> Paths:
    return Paths(str(source), str(tmp_path / "pub"), str(tmp_path / "work"))


def test_the_launched_job_returns_the_same_summary_as_the_job_in_process(
    generated_log: Path, tmp_path: Path
) -> None:
    from jobs.sessionize import run_sessionize

    cfg = small_config()
    launched = sessionize_stage(cfg, _paths(generated_log, tmp_path / "a"), None)
    in_process = sessionize_stage(cfg, _paths(generated_log, tmp_path / "b"), None, run_sessionize)
    assert isinstance(launched, SessionizeResult) and launched.sessions > 0
    ignore = {"work_dir", "seconds", "quarantine_path"}
    assert {k: v for k, v in launched.to_dict().items() if k not in ignore} == {
        k: v for k, v in in_process.to_dict().items() if k not in ignore
    }


def test_a_refused_input_keeps_the_jobs_message_and_exit_code(tmp_path: Path) -> None:
    source = tmp_path / "clicks.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "ts": [1]}), source)
    with pytest.raises(InputError, match=r"clicks\.parquet") as refused:
        sessionize_stage(small_config(), _paths(source, tmp_path), None)
    assert refused.value.exit_code == 2


def test_a_job_that_crashes_says_how_and_shows_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No summary written (a crash, not a refusal): the error names the exit and quotes the
    child's last lines."""
    monkeypatch.setattr(sessionize_app, "JOB_MODULE", "jobs.no_such_job")
    with pytest.raises(StageProcessError, match=r"exited with 1(.|\n)*No module named"):
        sessionize_stage(small_config(), _paths(tmp_path / "clicks", tmp_path), None)


def test_the_child_works_under_the_launchers_lock(tmp_path: Path) -> None:
    """A launched job sees the work folder as held (so it may clear a dead run's scratch) only
    while its launcher really holds the lock."""
    work = tmp_path / "work"
    work.mkdir()
    probe = [
        sys.executable,
        "-c",
        f"from embedding.core.lock import held_here; print(held_here({str(work)!r}))",
    ]

    def child_sees(env: dict[str, str]) -> str:
        import os

        done = subprocess.run(probe, env={**os.environ, **env}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with exclusive([work], "test"):
        inherited = held_env()
        assert str(work.resolve()) in inherited[HELD_ENV]
        assert child_sees(inherited) == "True"
        assert child_sees({}) == "False"
    assert child_sees(inherited) == "False"  # the launcher let go: the claim is stale
