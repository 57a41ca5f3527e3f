"""Planning a run: where it reads and writes (``Paths``), the writer lock, and the ``RunPlan``
(the data interval, the days with sessions, the version id, the run folder).

Each stage takes the config and a ``RunPlan`` (a small JSON-able record), reads its inputs from
disk and writes its outputs to the run folder ``<work_dir>/runs/<version>/``, so the DAG can pass
plans through XCom and a retried task redoes only its own step. Stages after planning do nothing
when the version is already published, except the publish stage, which then finishes an
interrupted publish.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

from embedding.core.atomic import remove_temp_files
from embedding.core.config import Config
from embedding.core.errors import InputError
from embedding.core.lock import held_here
from embedding.core.workdir import missing_days, read_marker
from embedding.core.workdir import window_days as list_window_days
from embedding.vectors import publish

logger = logging.getLogger(__name__)


TABLE_HASHES = ("sessions_hash", "booking_pairs_hash", "item_stats_hash")


@dataclass(frozen=True)
class Paths:
    input: str
    publish_root: str
    work_dir: str
    items: str | None = None  # the item table (CONTRACTS §1b), when the source has one


def writer_lock(
    paths: Paths,
    command: str,
    run: str | None = None,
    scope: str | None = None,
    release: bool = False,
    wait_s: float | None = None,
):
    """Hold the work folder and the publish root for one writer (``embedding.core.lock.exclusive``):
    a CLI run for its life, a DAG task for its own and, through the lease, its whole run."""
    from embedding.core.lock import exclusive

    return exclusive([paths.work_dir, paths.publish_root], command, run, scope, release, wait_s)


def resolve_paths(
    cfg: Config,
    input_path: Path | str | None = None,
    publish_root: Path | str | None = None,
    work_dir: Path | str | None = None,
    items_path: Path | str | None = None,
) -> Paths:
    """Explicit paths (CLI, relative to the cwd) win over config paths (relative to the project)."""
    p = cfg.paths
    root = Path(publish_root).resolve() if publish_root else p.resolve(p.publish_root)
    if input_path:
        source = Path(input_path).resolve()
    elif p.input:
        source = p.resolve(p.input)
    else:
        raise InputError("no input: pass --input or set paths.input in the config")
    if work_dir:
        work = Path(work_dir).resolve()
    elif p.work_dir:
        work = p.resolve(p.work_dir)
    else:
        work = root / ".work"
    if items_path:
        items = str(Path(items_path).resolve())
    else:
        items = str(p.resolve(p.items)) if p.items else None
    return Paths(str(source), str(root), str(work), items)


@dataclass(frozen=True)
class RunPlan:
    version: str
    interval_start: str  # the data interval trained on: [start, end)
    interval_end: str
    days: list[str]  # window days that hold sessions
    publish_root: str
    work_dir: str
    run_dir: str
    already_published: bool
    input_hashes: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunPlan:
        return cls(**data)


def days_to_sessionize(
    cfg: Config, paths: Paths, interval_start: date, interval_end: date
) -> list[date]:
    """The run's own days (always rebuilt) plus window days that have no partition yet."""
    own = [interval_start + timedelta(days=i) for i in range((interval_end - interval_start).days)]
    window = list_window_days(interval_end, cfg.window.days)
    return sorted(set(own) | set(missing_days(Path(paths.work_dir), window)))


def plan_run(cfg: Config, paths: Paths, interval_start: date, interval_end: date) -> RunPlan:
    """Fix the training window and the version id; find out whether it is already published."""
    work = Path(paths.work_dir)
    days, hashes = [], {}
    for day in [
        interval_start + timedelta(days=i) for i in range((interval_end - interval_start).days)
    ]:
        marker = read_marker(work, day)
        if marker is None:
            raise InputError(
                f"day {day} has not been sessionized ({work}/_days/{day}.json missing)"
            )
        if marker.get("n_sessions", 0) > 0:
            days.append(str(day))
            hashes[str(day)] = ":".join(marker[h] for h in TABLE_HASHES)
    if not days:
        raise InputError(f"no sessions in the window {interval_start}..{interval_end}")
    last_day = date.fromisoformat(days[-1])
    version = publish.version_id(
        last_day, cfg.fingerprint(), publish.source_hash(), [f"{d}={h}" for d, h in hashes.items()]
    )
    root = Path(paths.publish_root)
    plan = RunPlan(
        version=version,
        interval_start=str(interval_start),
        interval_end=str(interval_end),
        days=days,
        publish_root=str(root),
        work_dir=str(work),
        run_dir=str(work / "runs" / version),
        already_published=publish.is_published(root, version),
        input_hashes=hashes,
    )
    Path(plan.run_dir).mkdir(parents=True, exist_ok=True)
    if held_here(work):  # nobody else writes here: temp files are a killed writer's
        remove_temp_files(Path(plan.run_dir))
    logger.info(
        "plan: version %s over %s..%s (%d days with sessions)%s",
        version,
        interval_start,
        interval_end,
        len(days),
        ", already published" if plan.already_published else "",
    )
    return plan


def artefact(plan: RunPlan, name: str) -> Path:
    return Path(plan.run_dir) / name
