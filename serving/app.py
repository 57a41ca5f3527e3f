"""Assemble the FastAPI app that serves one published version of the item vectors.

Input: a publish root (CONTRACTS.md §2) and ``ServingConfig``. The lifespan loads the version
named by ``CURRENT`` once, at startup, onto ``app.state.loaded``; if nothing is published yet the
app still starts and answers 503 until a version is loaded. A version that exists but fails its
checks (checksum, norms, ids) stops the startup: serving it would be worse than not serving.

Hot reload: while the app runs, a background task reads ``CURRENT`` every
``poll_interval_s`` (0: never) and ``POST /admin/reload`` asks for the same on demand. Either
way ``Reloader.load`` builds a new ``LoadedVersion`` completely in a worker thread (one load at a
time), then swaps the single reference ``app.state.loaded``: requests in flight finish on the
version they started with, and the old version's memory goes once the last of them is done.
A version that fails its checks is logged once and refused; the old one keeps serving, and the
poller does not retry it until ``CURRENT`` names something else. A version loaded on demand
(``?version=``) likewise stays served until ``CURRENT`` moves.

The blocklist file (``ServingConfig.blocklist_path``) is reread at each poll when it changed,
and by ``POST /admin/reload``; a bad file is refused and the previous list stays in force.

Every request is counted and timed by ``serving.routes.metrics.MetricsMiddleware`` (``GET
/metrics``), and every route's 422 is valid JSON even when the rejected input holds NaN.
"""

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
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
from embedding.config import ServingConfig
from serving.blocklist import BlocklistWatcher
from serving.limits import BodySizeLimit, HeavySlots, RetryAfterOn503, unparsable_body_as_422
from serving.model import (
    LoadedVersion,
    NoCurrentVersionError,
    VersionLoadError,
    load_newest_valid,
    load_version,
    read_current,
)
from serving.routes import admin, health, metrics, neighbors
from serving.routes.neighbors import _json_safe
from serving.schemas import ErrorDetail

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    version: str
    previous: str | None
    changed: bool
    load_s: float


class Reloader:
    """Loads versions for one app, one at a time, and swaps them in.

    The poller acts only when ``CURRENT`` names something else than the last value it handled
    (``handled_current``): a version that failed is logged once and not retried at every poll,
    and a version loaded explicitly (``POST /admin/reload?version=``) stays served until
    ``CURRENT`` moves. An explicit ``load`` always tries again.
    """

    def __init__(self, app: FastAPI, handled_current: str | None = None) -> None:
        self.app = app
        self.lock = asyncio.Lock()
        self.handled_current = handled_current  # the CURRENT content last acted on
        self.current_error: str | None = None  # the last problem reading CURRENT, logged once

    def served_version(self) -> str | None:
        loaded: LoadedVersion | None = self.app.state.loaded
        return loaded.version if loaded is not None else None

    async def load(self, version: str | None = None) -> ReloadResult:
        """Load ``version`` (None: ``CURRENT``'s) unless it is served already, then swap.

        Raises:
            VersionLoadError: it is missing or fails a check; the old version keeps serving.
        """
        async with self.lock:
            root: Path = self.app.state.publish_root
            explicit = version is not None
            if version is None:
                version = await asyncio.to_thread(read_current, root)
                self.handled_current = version
            previous = self.served_version()
            if version == previous:
                return ReloadResult(version, previous, changed=False, load_s=0.0)
            started = time.perf_counter()
            try:  # a thread of its own: building an index must not block the event loop
                loaded = await asyncio.to_thread(
                    load_version, root, version, self.app.state.serving_cfg
                )
            except VersionLoadError as exc:
                self.app.state.metrics.count_reload("refused")
                logger.error(
                    "refusing version %s, still serving %s: %s", version, previous or "none", exc
                )
                raise
            # blocked rows of the new version, computed here rather than by its first request
            await asyncio.to_thread(self.app.state.blocklist.current.rows_for, loaded)
            load_s = time.perf_counter() - started
            swap(self.app, loaded)
            self.app.state.metrics.count_reload("ok")
            del loaded
            if explicit:  # pinned until CURRENT names something else
                with contextlib.suppress(VersionLoadError):
                    self.handled_current = await asyncio.to_thread(read_current, root)
            await asyncio.to_thread(settle_heap)  # the old version goes once requests drop it
            return ReloadResult(version, previous, changed=True, load_s=load_s)

    async def poll_once(self) -> ReloadResult | None:
        """Load ``CURRENT``'s version if CURRENT changed since last handled; None: nothing new."""
        root: Path = self.app.state.publish_root
        try:
            version = await asyncio.to_thread(read_current, root)
        except NoCurrentVersionError:
            return None
        except VersionLoadError as exc:  # unreadable or invalid CURRENT: log once per problem
            if self.current_error != str(exc):
                self.current_error = str(exc)
                served = self.served_version()
                logger.error("cannot read CURRENT, still serving %s: %s", served, exc)
            return None
        self.current_error = None
        if version == self.handled_current or self.lock.locked():
            return None  # nothing new, or a load is running: look again at the next poll
        self.handled_current = version
        if version == self.served_version():
            return None
        try:
            return await self.load(version)
        except VersionLoadError:
            return None  # logged by load; retried only when CURRENT changes

    async def poll_forever(self, interval_s: float) -> None:
        watcher: BlocklistWatcher = self.app.state.blocklist
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(watcher.check, False, self.app.state.loaded)
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must outlive any one bad surprise
                logger.exception("polling %s/CURRENT failed", self.app.state.publish_root)


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
        single_threaded_search()
        await run_in_threadpool(app.state.blocklist.check)
        try:  # in a worker thread: building a large index must not block the event loop
            await run_in_threadpool(reload, app)
        except NoCurrentVersionError as exc:
            logger.warning("starting without a version: %s", exc)
        except VersionLoadError as exc:  # e.g. a power cut damaged the newest version
            await run_in_threadpool(start_on_newest_valid, app, exc)
        await run_in_threadpool(settle_heap, True)
        served = app.state.loaded
        app.state.reloader = Reloader(app, served.version if served is not None else None)
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
    app.state.metrics = metrics.Metrics()
    app.state.blocklist = BlocklistWatcher(cfg.blocklist_file())
    app.state.heavy_slots = HeavySlots(cfg.max_heavy_requests)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(RetryAfterOn503)
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


def settle_heap(full: bool = False) -> None:
    """Freeze what survives (``gc.freeze``) after a version is loaded.

    A loaded version adds many long-lived objects; without this every full collection walks
    them again, a 30-60 ms pause of the event loop at 1M items. After a swap only the young
    generations are collected first (``full=False``): a full collection would hold the GIL,
    and so stall every request, while it walks both versions' objects. Frozen objects are
    still freed by reference counting when the next swap drops them (a version holds no
    reference cycles; ``tests/test_serving_reload.py`` checks that the old one goes).
    """
    gc.collect() if full else gc.collect(1)
    gc.freeze()
    _release_free_memory()


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), where there is glibc.

    The old version's index and arrays were allocated by a worker thread, in a malloc arena
    glibc keeps for reuse: without a trim the process may stay near two versions' RSS.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def swap(app: FastAPI, loaded: LoadedVersion) -> None:
    """Make ``loaded`` the version served; a single attribute assignment is the swap."""
    previous: LoadedVersion | None = app.state.loaded
    app.state.loaded_at = (loaded.version, datetime.now(UTC))
    app.state.loaded = loaded
    logger.info(
        "serving version %s (was %s)", loaded.version, previous.version if previous else "none"
    )


def single_threaded_search() -> None:
    """One OpenMP thread for FAISS in the service: a request is one query, and idle OpenMP
    workers spin-wait on the very cores that answer requests (measured at 1M x 32, 500 req/s on
    2 cores: p99 89 ms and max 1.4 s with two threads)."""
    import faiss

    faiss.omp_set_num_threads(1)


def start_on_newest_valid(app: FastAPI, error: VersionLoadError) -> LoadedVersion:
    """Serve the newest version that verifies when CURRENT's does not; re-raise ``error``
    (the service does not start) when none does."""
    current = None
    with contextlib.suppress(VersionLoadError):
        current = read_current(app.state.publish_root)
    logger.error("CURRENT's version cannot be served: %s", error)
    try:
        loaded = load_newest_valid(
            app.state.publish_root, app.state.serving_cfg, skip=[current] if current else []
        )
    except VersionLoadError:
        raise error from None
    logger.warning(
        "starting on %s, the newest version that verifies; CURRENT names %s: rerun its "
        "publish or roll back", loaded.version, current,
    )  # fmt: skip
    app.state.blocklist.current.rows_for(loaded)
    swap(app, loaded)
    return loaded


def reload(app: FastAPI, version: str | None = None) -> LoadedVersion:
    """Load ``version`` (None: ``CURRENT``'s) fully, then make it the one the app serves.

    Synchronous, without the reload lock: for startup and scripts. On any error the app keeps
    serving what it had; handlers that already took the old version finish with it.
    """
    loaded = load_version(app.state.publish_root, version, app.state.serving_cfg)
    app.state.blocklist.current.rows_for(loaded)
    swap(app, loaded)
    return loaded
