"""Sessionize as a Spark application of its own: ``python -m jobs.sessionize`` in a child process.

``embedding`` never imports ``jobs`` (``jobs`` imports ``embedding.core``: the arrow points one
way). The pipeline reaches the Spark job as a scheduler reaches any Spark application: it
launches it, with the same entry point ``spark-submit jobs/sessionize.py`` runs, hands it the
resolved config as a file, and reads back the summary the job writes. Callers that may import
``jobs`` (the DAG, tests) pass ``jobs.sessionize.run_sessionize`` to ``sessionize_stage``
instead and run the job in their own process.

Errors keep their meaning: a job that stops on bad input (exit 2; it writes its message to the
summary file) raises ``InputError`` with the job's own message; a crash raises
``StageProcessError`` with its last lines of output.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path

from embedding.core.config import Config
from embedding.core.errors import EmbeddingError, InputError
from embedding.core.lock import held_env
from embedding.stages.stage_process import StageProcessError, describe_exit, run_child

JOB_MODULE = "jobs.sessionize"
# run_sessionize(cfg, input, work_dir, days, items) -> its result (a dict, or has ``to_dict``)
Sessionizer = Callable[[Config, Path, Path, "list[date] | None", "Path | None"], object]


def job_command(
    conf: Path, input_path: Path, work_dir: Path, days: list[date] | None, items: Path | None
) -> list[str]:
    command = [sys.executable, "-m", JOB_MODULE, "--conf", str(conf)]
    command += ["--input", str(input_path), "--work-dir", str(work_dir)]
    if items is not None:
        command += ["--items", str(items)]
    if days is not None:
        command += ["--days", ",".join(str(d) for d in days)]
    return command


def submit_sessionize(
    cfg: Config,
    input_path: Path,
    work_dir: Path,
    days: list[date] | None = None,
    items: Path | None = None,
) -> dict:
    """Run the sessionize job in a child process; its summary (``SessionizeResult.to_dict``).

    Raises:
        InputError: the job refused its input (its message, unchanged).
        EmbeddingError: the job stopped on another error of its own (its exit code kept).
        StageProcessError: the job crashed or was killed.
    """
    with tempfile.TemporaryDirectory(prefix="sessionize-") as scratch:
        folder = Path(scratch)
        conf = folder / "config.json"  # JSON is YAML: load_config reads it back unchanged
        conf.write_text(cfg.model_dump_json(indent=1))
        summary = folder / "result.json"
        command = [*job_command(conf, input_path, work_dir, days, items)]
        command += ["--result-json", str(summary)]
        child = run_child("sessionize", command, folder / "sessionize.pid", env=held_env())
        written = json.loads(summary.read_text()) if summary.exists() else None
    if child.code == 0 and written is not None:
        return written
    if child.code > 0 and written is not None and "error" in written:
        if written.get("exit_code") == InputError.exit_code:
            raise InputError(written["error"])
        error = EmbeddingError(written["error"])
        error.exit_code = int(written.get("exit_code", 1))
        raise error
    raise StageProcessError(
        f"sessionize process {child.pid} {describe_exit(child.code)} after {child.seconds:.1f} s; "
        f"its last output:\n{child.output}"
    )


def as_dict(result: object) -> dict:
    """A sessionizer's result as a dict (the in-process job returns a dataclass)."""
    if isinstance(result, Mapping):
        return dict(result)
    return result.to_dict()  # type: ignore[attr-defined]
