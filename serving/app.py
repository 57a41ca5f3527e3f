"""Assemble the FastAPI app that serves one published version of the item vectors.

Input: a publish root (CONTRACTS.md §2) and ``ServingConfig``. The lifespan loads the version
named by ``CURRENT`` once, at startup, onto ``app.state.loaded``; if nothing is published yet the
app still starts and answers 503 until a version is loaded. A version that exists but fails its
checks (checksum, norms, ids) stops the startup: serving it would be worse than not serving.
``reload`` builds a new ``LoadedVersion`` completely, then swaps that single reference, so
requests in flight finish on the version they started with.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from embedding import __version__
from embedding.config import ServingConfig
from serving.model import LoadedVersion, NoCurrentVersionError, load_version
from serving.routes import health, neighbors

logger = logging.getLogger(__name__)


def create_app(publish_root: Path, cfg: ServingConfig | None = None) -> FastAPI:
    """The service for ``publish_root``; nothing is read until the lifespan starts."""
    cfg = cfg or ServingConfig()
    publish_root = Path(publish_root)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # in a worker thread: building a large index must not block the event loop
            await run_in_threadpool(reload, app)
        except NoCurrentVersionError as exc:
            logger.warning("starting without a version: %s", exc)
        yield
        app.state.loaded = None

    app = FastAPI(
        title="item-embedding neighbours",
        version=__version__,
        summary="Items similar to an item, from the published version named by CURRENT.",
        lifespan=lifespan,
    )
    app.state.publish_root = publish_root
    app.state.serving_cfg = cfg
    app.state.loaded = None  # the one reference handlers read and reload swaps
    app.include_router(health.router)
    app.include_router(neighbors.build_router(cfg.max_k))
    return app


def reload(app: FastAPI, version: str | None = None) -> LoadedVersion:
    """Load ``version`` (None: ``CURRENT``'s) fully, then make it the one the app serves.

    On any error the app keeps serving what it had. A single attribute assignment is the swap:
    handlers that already took the old version finish with it.
    """
    loaded = load_version(app.state.publish_root, version, app.state.serving_cfg)
    previous: LoadedVersion | None = app.state.loaded
    app.state.loaded = loaded
    logger.info(
        "serving version %s (was %s)", loaded.version, previous.version if previous else "none"
    )
    return loaded
