"""Failure alerts: one clear log line per failed task, and optionally a webhook post.

Airflow calls ``on_failure`` with the task's context. The alert line starts with ``ALERT`` and
names the DAG, task, try, data interval and the error's first line, so one grep finds every
failure. When the environment variable ``EMBEDDING_ALERT_WEBHOOK`` holds a URL, the same
text is posted there as JSON (``{"text": ..., "dag_id": ..., ...}``, Slack-compatible); a
webhook that fails is logged, never raised: an alert must not hide the failure it reports.
``task_defaults`` gives both DAGs the same ``default_args`` (owner, retries with backoff, this
alert on failure). Standard library only: the DAG files import this at parse time.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

logger = logging.getLogger("embedding.alerts")

WEBHOOK_ENV = "EMBEDDING_ALERT_WEBHOOK"
WEBHOOK_TIMEOUT_S = 5.0


def redacted(url: str) -> str:
    """The webhook as logs may show it: scheme and host only (its path is often the secret)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


MAX_ERROR_CHARS = 500


def alert_fields(context: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of a failure from an Airflow task context (missing keys become None)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    error = context.get("exception")
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    message = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""
    return {
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "data_interval": [None if d is None else str(d) for d in (start, end)],
        "error_type": type(error).__name__ if error is not None else None,
        "error": message[:MAX_ERROR_CHARS],
    }


def alert_line(fields: Mapping[str, Any]) -> str:
    start, end = fields["data_interval"]
    return (
        f"ALERT {fields['dag_id']}.{fields['task_id']} failed (try {fields['try_number']}, "
        f"run {fields['run_id']}, data interval {start} .. {end}): "
        f"{fields['error_type']}: {fields['error']}"
    )


def post_webhook(
    url: str, payload: Mapping[str, Any], timeout_s: float = WEBHOOK_TIMEOUT_S
) -> bool:
    """POST ``payload`` as JSON; True on a 2xx answer. Failures are logged, not raised."""
    if not url.startswith(("http://", "https://")):
        logger.error("alert webhook %s is not an http(s) URL; not posted", WEBHOOK_ENV)
        return False
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            ok = 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        logger.error("alert webhook %s failed: %s", redacted(url), exc)
        return False
    if not ok:
        logger.error("alert webhook %s answered %d", redacted(url), response.status)
    return ok


def on_failure(context: Mapping[str, Any]) -> None:
    """Airflow ``on_failure_callback``: log the ALERT line, post it when a webhook is set."""
    fields = alert_fields(context)
    line = alert_line(fields)
    logger.error(line)
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if url:
        post_webhook(url, {"text": line, **fields})


def task_defaults(retry_delay: timedelta, **extra: Any) -> dict[str, Any]:
    """The DAGs' ``default_args``: retries (``$EMBEDDING_RETRIES``, default 2) backing off
    exponentially from ``retry_delay``, ``on_failure`` as the failure callback, and ``extra``
    (e.g. an execution timeout)."""
    return {
        "owner": "recsys-embeddings",
        "retries": int(os.environ.get("EMBEDDING_RETRIES", "2")),
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "on_failure_callback": on_failure,
        **extra,
    }
