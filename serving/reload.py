"""Swap published versions into a running service without a visible pause.

While the app runs, a background task reads ``CURRENT`` every ``poll_interval_s`` (0: never)
and ``POST /admin/reload`` asks for the same on demand. Either way ``Reloader.load`` builds the
new ``LoadedVersion`` completely on the app's loader thread (one load at a time), then swaps
the single reference ``app.state.loaded``: requests in flight finish on the version they
started with, and the old version's memory goes once the last of them is done. A version that
fails its checks is logged once and refused; the old one keeps serving, and the poller does not
retry it until ``CURRENT`` names something else. A version loaded on demand (``?version=``)
likewise stays served until ``CURRENT`` moves.

What keeps a swap invisible to requests (``make bench-serve``: 1M x 32 at 500 req/s on 2 cores,
the benchmark publishing on the same cores: p99 11 ms, max 24 ms across two swaps):

- the single-query routes search on searcher threads (``serving.searcher``), not on the event
  loop: with the search on the loop, that thread was ~90 % busy, and any CPU the publish or the
  load took made requests queue (max 0.5-2.3 s in 3 of 4 swaps);
- a load is short (``serving.loading``: a prebuilt index's vectors are used in place, not
  decoded from Parquet: 1.0 s of CPU at 1M x 32) and every step of it releases the GIL for all
  but a few ms (Parquet read on one thread, FAISS index read, numpy columns), and the old
  version is freed on the loader thread, not on the event loop;
- the loader thread keeps the normal CPU priority: niced to 19 it was starved while holding the
  GIL whenever the publisher kept both cores busy, and requests waited for it (a swap's max
  1,089 ms against 68 ms without);
- the process uses the system allocator for Arrow (``process_settings``): Arrow's default pool
  kept the Parquet read's buffers, about 600 MB at 1M x 32, for the life of the process.
"""

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
from fastapi import FastAPI

from serving.blocklist import BlocklistWatcher
from serving.model import (
    LoadedVersion,
    NoCurrentVersionError,
    VersionLoadError,
    load_newest_valid,
    load_version,
    read_current,
)
from serving.searcher import single_threaded_search

logger = logging.getLogger(__name__)

T = TypeVar("T")


def loader_thread() -> ThreadPoolExecutor:
    """The one thread an app loads (and frees) versions on."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="version-loader")


def process_settings() -> None:
    """Process-wide settings for a service process: one FAISS thread, the system allocator."""
    single_threaded_search()
    # Arrow's default pool (mimalloc) keeps what a version load freed: 1.2 GB of RSS instead
    # of 0.6 GB at 1M x 32; the system allocator returns it (with ``malloc_trim``)
    pa.set_memory_pool(pa.system_memory_pool())


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
        return served_version(self.app)

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
            try:  # the loader thread: building an index must not block the event loop
                loaded = await self.in_loader(
                    load_version, root, version, self.app.state.serving_cfg
                )
            except VersionLoadError as exc:
                self.app.state.metrics.count_reload("refused")
                logger.error(
                    "refusing version %s, still serving %s: %s", version, previous or "none", exc
                )
                raise
            # blocked rows of the new version, computed here rather than by its first request
            await self.in_loader(self.app.state.blocklist.current.rows_for, loaded)
            load_s = time.perf_counter() - started
            retired = [self.app.state.loaded]
            swap(self.app, loaded)
            self.app.state.metrics.count_reload("ok")
            del loaded
            # the old version is freed by the loader thread, not by the event loop (about
            # 20 ms at 1M items), once requests in flight drop it
            await self.in_loader(release, retired)
            if explicit:  # pinned until CURRENT names something else
                with contextlib.suppress(VersionLoadError):
                    self.handled_current = await asyncio.to_thread(read_current, root)
            return ReloadResult(version, previous, changed=True, load_s=load_s)

    async def in_loader(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this app's loader thread (``loader_thread``)."""
        return await asyncio.get_running_loop().run_in_executor(self.app.state.loader, fn, *args)

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


def release(retired: list[LoadedVersion | None]) -> None:
    """Drop the references in ``retired`` (the version swapped out), then ``settle_heap``."""
    retired.clear()
    settle_heap()


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


def served_version(app: FastAPI) -> str | None:
    loaded: LoadedVersion | None = app.state.loaded
    return loaded.version if loaded is not None else None


def swap(app: FastAPI, loaded: LoadedVersion) -> None:
    """Make ``loaded`` the version served; a single attribute assignment is the swap."""
    previous: LoadedVersion | None = app.state.loaded
    app.state.loaded_at = (loaded.version, datetime.now(UTC))
    app.state.loaded = loaded
    logger.info(
        "serving version %s (was %s)", loaded.version, previous.version if previous else "none"
    )


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
