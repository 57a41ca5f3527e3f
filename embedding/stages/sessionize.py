"""The sessionize stage: validate the click log and build the sessions of the run's days (the
Spark job ``jobs.sessionize``, in this process or as an application of its own).
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

from embedding.core.config import Config
from embedding.core.ingest_summary import SessionizeResult
from embedding.stages.plan import Paths
from embedding.stages.sessionize_app import Sessionizer, as_dict, submit_sessionize

logger = logging.getLogger(__name__)


def sessionize_stage(
    cfg: Config, paths: Paths, days: list[date] | None, job: Sessionizer | None = None
) -> SessionizeResult:
    """Validate the click log and build the sessions of ``days`` (None: all its days).

    ``job``: the sessionize job run in this process (``jobs.sessionize.run_sessionize``, passed
    by callers that import ``jobs``); None launches it as an application of its own
    (``embedding.stages.sessionize_app``)."""
    items = Path(paths.items) if paths.items else None
    result = (job or submit_sessionize)(cfg, Path(paths.input), Path(paths.work_dir), days, items)
    if isinstance(result, SessionizeResult):
        return result
    return SessionizeResult.from_dict(as_dict(result))
