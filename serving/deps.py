"""Dependencies shared by the routers: the version being served, read from ``app.state``.

``app.state.loaded`` is the single reference a reload swaps; a handler takes it once through
``LoadedDep`` and uses that object for the whole request, so one answer never mixes versions.

They are ``async``: they only read attributes, and a sync dependency would cost a hop to the
threadpool and back on every request (FastAPI runs sync dependencies in worker threads).
"""

import math
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request, status

from serving.blocklist import Blocklist, BlocklistWatcher
from serving.model import LoadedVersion

RETRY_NO_VERSION_S = 30  # Retry-After of a 503 while nothing is loaded


async def get_loaded_or_none(request: Request) -> LoadedVersion | None:
    return request.app.state.loaded


async def get_loaded(request: Request) -> LoadedVersion:
    loaded = request.app.state.loaded
    if loaded is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="no version loaded: nothing is published yet",
            headers={"Retry-After": str(RETRY_NO_VERSION_S)},
        )
    return loaded


LoadedDep = Annotated[LoadedVersion, Depends(get_loaded)]


async def require_blocklist(request: Request) -> Blocklist:
    """The blocklist in force; 503 with Retry-After while a configured one was never read (the
    service fails closed: without the list an answer could hold a blocked item)."""
    watcher: BlocklistWatcher = request.app.state.blocklist
    if not watcher.ready:
        retry = max(1, math.ceil(request.app.state.serving_cfg.poll_interval_s or 5))
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"item routes are closed until the blocklist is read: {watcher.problem}",
            headers={"Retry-After": str(retry)},
        )
    return watcher.current


BlocklistDep = Annotated[Blocklist, Depends(require_blocklist)]


async def get_blocked_rows(loaded: LoadedDep, blocklist: BlocklistDep) -> np.ndarray:
    """Rows of the served version that the blocklist in force withholds (cached per version;
    the reloader and the blocklist watcher fill the cache in a worker thread before a swap)."""
    return blocklist.rows_for(loaded)


BlockedRowsDep = Annotated[np.ndarray, Depends(get_blocked_rows)]
MaybeLoadedDep = Annotated[LoadedVersion | None, Depends(get_loaded_or_none)]
