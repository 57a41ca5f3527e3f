"""Serving refresh: after a publish, check the new version and make the service serve it.

Three steps, one Airflow task each in ``dags/serving_refresh.py`` (scheduled on the publish
Asset), each usable alone:

1. ``check_published(root)``: the version ``CURRENT`` names exists and every file matches its
   manifest checksum (what the service will verify too, found here first with a clear error);
2. ``request_reload(url, version)``: ``POST /admin/reload`` with no version (with
   ``Authorization: Bearer`` when the service's admin token variable is set), so the service
   loads whatever ``CURRENT`` names when it gets the request: a rollback made after the check is
   never undone (an explicit version would stay pinned until ``CURRENT`` moved again). A 409
   (the service refused the version) fails with the service's reason;
3. ``confirm_served(url, version)``: ``GET /version`` names it; the DAG reads ``CURRENT`` again
   for this step.

The service URL is ``EMBEDDING_SERVING_URL`` when set, else ``http://<serving.host>:<serving.port>``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx

from embedding.core.config import ServingConfig
from embedding.core.errors import EmbeddingError
from embedding.vectors.versions import (
    NoCurrentVersionError,
    VersionError,
    read_current,
    verify_version,
    version_folder,
)

logger = logging.getLogger(__name__)

URL_ENV = "EMBEDDING_SERVING_URL"
TIMEOUT_S = 600.0  # a reload of a version without a prebuilt index builds one: minutes at 1M


class RefreshError(EmbeddingError):
    """The new version could not be checked, or the service did not take it."""

    exit_code = 1


def service_url(cfg: ServingConfig) -> str:
    return os.environ.get(URL_ENV, "").strip().rstrip("/") or f"http://{cfg.host}:{cfg.port}"


def check_published(root: Path) -> dict[str, Any]:
    """``{"version", "n_items", "dim"}`` of CURRENT's version, its checksums verified."""
    try:
        version = read_current(root)
    except NoCurrentVersionError as exc:
        raise RefreshError(f"{exc}: nothing is published to refresh") from exc
    except VersionError as exc:
        raise RefreshError(str(exc)) from exc
    try:
        manifest = verify_version(version_folder(root, version))
    except VersionError as exc:
        raise RefreshError(f"CURRENT names {version}, which fails its checks: {exc}") from exc
    logger.info(
        "published version %s: %s items, dim %s, checksums ok",
        version,
        manifest.get("n_items"),
        manifest.get("dim"),
    )
    return {"version": version, "n_items": manifest.get("n_items"), "dim": manifest.get("dim")}


def _headers(cfg: ServingConfig) -> dict[str, str]:
    token = os.environ.get(cfg.admin_token_env, "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def request_reload(
    url: str, version: str, cfg: ServingConfig, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """Ask the service at ``url`` to load what ``CURRENT`` names now (``version``: what the
    check found there, for the log); its answer (``Reloaded``)."""
    try:
        response = httpx.post(f"{url}/admin/reload", headers=_headers(cfg), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise RefreshError(f"{url}/admin/reload: no answer ({exc}); is the service up?") from exc
    body = _json(response)
    if response.status_code == 409:
        raise RefreshError(
            f"the service refused CURRENT's version (checked: {version}) and still serves "
            f"{body.get('version')}: {body.get('detail')}"
        )
    if response.status_code != 200:
        raise RefreshError(
            f"{url}/admin/reload answered {response.status_code}: {body.get('detail', body)}"
        )
    if body.get("version") != version:
        logger.warning(
            "CURRENT moved from %s to %s since the check (a rollback or a newer publish): the "
            "service serves CURRENT's",
            version,
            body.get("version"),
        )
    logger.info(
        "service at %s serves %s (was %s, changed %s, load %.2f s)",
        url,
        body.get("version"),
        body.get("previous"),
        body.get("changed"),
        body.get("load_s", 0.0),
    )
    return body


def confirm_served(url: str, version: str, wait_s: float = 30.0) -> dict[str, Any]:
    """``GET /version`` until it names ``version`` (at most ``wait_s``); its answer."""
    deadline = time.monotonic() + wait_s
    body: dict[str, Any] = {}
    while True:
        try:
            response = httpx.get(f"{url}/version", timeout=10.0)
            body = _json(response)
            if response.status_code == 200 and body.get("version") == version:
                logger.info("confirmed: %s/version names %s", url, version)
                return body
        except httpx.HTTPError as exc:
            body = {"error": str(exc)}
        if time.monotonic() > deadline:
            raise RefreshError(f"{url}/version still answers {body} after {wait_s:.0f} s")
        time.sleep(0.5)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:200]}
    return body if isinstance(body, dict) else {"detail": body}
