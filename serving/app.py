"""Assemble the FastAPI app that serves one published version of the item vectors.

Input: a publish root (CONTRACTS.md §2) and ``ServingConfig``. The lifespan loads the version
named by ``CURRENT`` once, at startup, onto ``app.state.loaded``; if nothing is published yet the
app still starts and answers 503 until a version is loaded. A version that exists but fails its
checks (checksum, norms, ids) stops the startup: serving it would be worse than not serving.

Hot reload (``serving.reload``): while the app runs, a background task reads ``CURRENT`` every
``poll_interval_s`` (0: never) and ``POST /admin/reload`` asks for the same on demand; the new
version is loaded on a low-priority thread and swapped in with one assignment.

The blocklist file (``ServingConfig.blocklist_path``) is reread at each poll when it changed,
and by ``POST /admin/reload``; a bad file is refused and the previous list stays in force.

Every request is counted and timed by ``serving.routes.metrics.MetricsMiddleware`` (``GET
/metrics``), and every route's 422 is valid JSON even when the rejected input holds NaN.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedding import __version__
from embedding.core.config import ServingConfig
from serving.blocklist import BlocklistWatcher
from serving.fast_path import SimilarFastPath
from serving.limits import BodySizeLimit, HeavySlots, RetryAfterOn503, unparsable_body_as_422
from serving.model import NoCurrentVersionError, VersionLoadError
from serving.reload import (
    Reloader,
    loader_thread,
    process_settings,
    reload,
    served_version,
    settle_heap,
    start_on_newest_valid,
)
from serving.routes import admin, health, metrics, neighbors
from serving.routes.neighbors import _json_safe
from serving.schemas import ErrorDetail
from serving.searcher import searcher_threads

logger = logging.getLogger(__name__)


# answered before any route sees the request: by the HTTP server (uvicorn's h11 parser) or by
# the body-size limit (serving.limits), on every operation
SERVER_REFUSALS: dict[int | str, dict] = {
    400: {
        "description": "malformed request, or a request line or headers over the server's "
        "limit (plain text, from the HTTP server)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    413: {"description": "request body over serving.max_body_bytes", "model": ErrorDetail},
}


def create_app(publish_root: Path, cfg: ServingConfig | None = None) -> FastAPI:
    """The service for ``publish_root``; nothing is read until the lifespan starts."""
    cfg = cfg or ServingConfig()
    publish_root = Path(publish_root)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        process_settings()
        await run_in_threadpool(app.state.blocklist.check)
        try:  # in a worker thread: building a large index must not block the event loop
            await run_in_threadpool(reload, app)
        except NoCurrentVersionError as exc:
            logger.warning("starting without a version: %s", exc)
        except VersionLoadError as exc:  # e.g. a power cut damaged the newest version
            await run_in_threadpool(start_on_newest_valid, app, exc)
        await run_in_threadpool(settle_heap, True)
        # no local name for the version: this frame lives as long as the app, and a reference
        # here would keep the first version in memory after every swap
        app.state.reloader = Reloader(app, served_version(app))
        app.state.loader = loader_thread()
        app.state.searcher = searcher_threads(cfg.search_threads)
        poller = None
        if cfg.poll_interval_s > 0:
            poller = asyncio.create_task(app.state.reloader.poll_forever(cfg.poll_interval_s))
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            app.state.loader.shutdown(wait=False, cancel_futures=True)
            app.state.searcher.shutdown(wait=False, cancel_futures=True)
            app.state.loaded = None
            app.state.loaded_at = None

    app = FastAPI(
        title="item-embedding neighbours",
        version=__version__,
        summary="Items similar to an item, from the published version named by CURRENT.",
        lifespan=lifespan,
        responses=SERVER_REFUSALS,
    )
    app.state.publish_root = publish_root
    app.state.serving_cfg = cfg
    app.state.loaded = None  # the one reference handlers read and reload swaps
    app.state.loaded_at = None  # (version, when it was swapped in)
    app.state.reloader = None  # set by the lifespan
    app.state.loader = None  # the lifespan's loader thread (serving.reload.loader_thread)
    app.state.searcher = None  # the lifespan's searcher threads (serving.searcher)
    app.state.metrics = metrics.Metrics()
    app.state.blocklist = BlocklistWatcher(cfg.blocklist_file())
    app.state.heavy_slots = HeavySlots(cfg.max_heavy_requests)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(RetryAfterOn503)
    app.add_middleware(SimilarFastPath, max_k=cfg.max_k)  # inside metrics: counted the same
    app.add_middleware(metrics.MetricsMiddleware, metrics=app.state.metrics)  # outermost
    app.add_exception_handler(RequestValidationError, json_safe_validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(health.router)
    app.include_router(neighbors.build_router(cfg.max_k))
    app.include_router(admin.router)
    app.include_router(metrics.router)
    return app


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's HTTPException answer, except an undecodable body: a 422 like any invalid JSON
    (a 400 is kept for what the server itself refuses: malformed or oversized request lines)."""
    assert isinstance(exc, StarletteHTTPException)  # registered for that class only
    body = unparsable_body_as_422(exc)
    if body is not None:
        return JSONResponse(status_code=422, content=body)
    return await http_exception_handler(request, exc)


async def json_safe_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with NaN/infinities in the echoed input written as strings.

    Starlette parses ``NaN``/``Infinity`` in JSON bodies and pydantic echoes the rejected input,
    which FastAPI's own handler cannot encode as strict JSON (a 500). Every route, not only the
    neighbour routes (``JsonSafeErrorsRoute``), gets a valid JSON 422 this way.
    """
    if not isinstance(exc, RequestValidationError):  # registered for that class only
        raise exc
    safe = RequestValidationError(_json_safe(exc.errors()), body=_json_safe(exc.body))
    return await request_validation_exception_handler(request, safe)
