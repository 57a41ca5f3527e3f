"""Run a heavy stage (skip-gram, fine-tune) in a child process of its own.

Input: the stage name, the config file and overrides, and the run's ``RunPlan`` as a dict.
Output: the stage's artefacts in the run folder, written by
``python -m embedding stage <name> --plan <run_dir>/<name>.plan.json``.

Why a process: it can be killed (out of memory, an execution timeout, an operator) without
taking the scheduler's task runner with it, and a rerun starts in a fresh interpreter. The
skip-gram starts from scratch (gensim cannot resume deterministically, so a killed skip-gram is
retrained, never continued); the fine-tune resumes after the last epoch of its checkpoint
(``<run_dir>/finetuned.ckpt``, ``embedding.train.checkpoint``) and ends with the same bytes as
a run never killed. The child's pid is in ``<run_dir>/<name>.pid`` while it runs; its output is
copied line by line into this process's log; every artefact it writes lands by an atomic
rename, so a kill leaves either the previous file or none, never half of one. If this process
is stopped (timeout, SIGTERM), the child is killed too.

    run_stage_process("train", "conf/default.yaml", [], plan.to_dict())
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from embedding import PROJECT_ROOT
from embedding.core.errors import EmbeddingError

logger = logging.getLogger(__name__)

STAGES = ("train", "finetune")
RETRY = {  # what a retry of the stage does, quoted in the error
    "train": "a retry starts it again from scratch",
    "finetune": "a retry resumes it after the last epoch of its checkpoint",
}
TAIL_LINES = 20  # last lines of the child's output quoted in the error


class StageProcessError(EmbeddingError):
    """The stage's process failed or was killed; the message says how and ends with its output."""

    exit_code = 1


def pid_file(run_dir: Path | str, stage: str) -> Path:
    return Path(run_dir) / f"{stage}.pid"


def stage_command(stage: str, conf: str | Path, overrides: list[str], plan_path: Path) -> list[str]:
    command = [sys.executable, "-m", "embedding", "stage", stage, "--plan", str(plan_path)]
    command += ["--conf", str(conf)]
    for override in overrides:
        command += ["--set", override]
    return command


def describe_exit(code: int) -> str:
    """'exited with 2' or 'killed by SIGKILL' (a negative code is the signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or killed by hand)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with {code}"


def run_stage_process(
    stage: str, conf: str | Path, overrides: list[str], plan: dict, timeout_s: float | None = None
) -> float:
    """Run ``stage`` for ``plan`` in a child process; the seconds it took.

    Raises:
        StageProcessError: the child exited non-zero, was killed, or ran past ``timeout_s``.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    run_dir = Path(plan["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_path = run_dir / f"{stage}.plan.json"
    plan_path.write_text(json.dumps(plan, indent=1, sort_keys=True))
    command = stage_command(stage, conf, overrides, plan_path)
    child = run_child(stage, command, pid_file(run_dir, stage), timeout_s)
    if child.code != 0:
        raise StageProcessError(
            f"{stage} process {child.pid} {describe_exit(child.code)} after {child.seconds:.1f} s; "
            f"{RETRY[stage]}. Its last output:\n{child.output}"
        )
    return child.seconds


@dataclass(frozen=True)
class ChildResult:
    pid: int
    code: int  # exit status; negative: killed by that signal
    seconds: float
    tail: list[str]  # its last TAIL_LINES lines of output

    @property
    def output(self) -> str:
        return "\n".join(self.tail) or "(no output)"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with the project on PYTHONPATH, a fixed hash seed and ``extra``."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    # gensim seeds each word's initial vector with Python's hash(): a fixed hash seed is part
    # of a reproducible run (the Makefile exports 0 too)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def run_child(
    label: str,
    command: list[str],
    marker: Path,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ChildResult:
    """Run ``command`` from the project root, its output copied line by line into this log and
    its pid in ``marker`` while it runs; killed with this process or past ``timeout_s``.

    Raises:
        StageProcessError: it ran past ``timeout_s``.
    """
    started = time.monotonic()
    tail: list[str] = []
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    marker.write_text(f"{process.pid}\n")
    logger.info("%s: running in process %d: %s", label, process.pid, " ".join(command))
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            logger.info("[%s %d] %s", label, process.pid, line)
            tail = [*tail[-(TAIL_LINES - 1) :], line]
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                process.kill()
                raise StageProcessError(f"{label}: ran past its {timeout_s:.0f} s limit; killed")
        code = process.wait()
    finally:
        if process.poll() is None:  # we are being stopped: the child goes with us
            process.kill()
            process.wait()
        marker.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    if code == 0:
        logger.info("%s: process %d done in %.1f s", label, process.pid, seconds)
    return ChildResult(process.pid, code, seconds, tail)
