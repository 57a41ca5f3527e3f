"""Named kill points for the chaos benchmark (``make chaos``, ``bench/bench_chaos.py``).

With ``EMBEDDING_KILL_AT=<point>`` in its environment, a process that reaches ``point(<point>)``
SIGKILLs its whole process group (itself, its stage children, its Spark JVM): the crash of a
machine, as close as one process can make it. ``<point>:<n>`` kills the n-th time this process
reaches it (``finetune.epoch:2``: after the second epoch); plain ``<point>``, the first. Unset
(always, outside the benchmark), a point is one dictionary lookup. The points, in run order:
``POINTS``.
"""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)

ENV = "EMBEDDING_KILL_AT"
POINTS = (
    "sessionize.staged",  # the Spark job wrote its staging folder, no day committed
    "sessionize.committing",  # the first day committed, the others not
    "train.epoch",  # skip-gram after its first epoch
    "finetune.epoch",  # the fine-tune after an epoch, its checkpoint written
    "evaluate.scored",  # metrics computed, not written
    "cold_start.inferred",  # cold-start vectors computed, not written
    "publish.refit",  # the refit trained, not written
    "publish.report",  # the report rendered, nothing published
    "publish.index",  # the ANN index built, not saved
    "publish.data_written",
    "publish.manifest_written",
    "publish.before_rename",
    "publish.after_rename",
    "publish.before_current",
    "publish.retention",  # CURRENT moved, version retention not applied
)


_reached: dict[str, int] = {}  # point -> times this process reached it (named points only)


def point(name: str) -> None:
    """SIGKILL this process group here when ``EMBEDDING_KILL_AT`` names ``name`` (the n-th time
    with ``name:n``)."""
    target = os.environ.get(ENV)
    if target is None:
        return
    wanted, _, nth = target.partition(":")
    if wanted != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] < int(nth or 1):
        return
    logger.warning("chaos: SIGKILL of process group %d at %s", os.getpgrp(), name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def publish_fault(step: str) -> None:
    """The publisher's fault hook (``publish.STEPS``) as kill points ``publish.<step>``."""
    point(f"publish.{step}")
