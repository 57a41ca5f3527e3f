"""Dependencies shared by the routers: the version being served, read from ``app.state``.

``app.state.loaded`` is the single reference a reload swaps; a handler takes it once through
``LoadedDep`` and uses that object for the whole request, so one answer never mixes versions.

They are ``async``: they only read attributes, and a sync dependency would cost a hop to the
threadpool and back on every request (FastAPI runs sync dependencies in worker threads).
"""

from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request, status

from serving.model import LoadedVersion


async def get_loaded_or_none(request: Request) -> LoadedVersion | None:
    return request.app.state.loaded


async def get_loaded(request: Request) -> LoadedVersion:
    loaded = request.app.state.loaded
    if loaded is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no version loaded: {request.app.state.publish_root} has no CURRENT yet",
        )
    return loaded


LoadedDep = Annotated[LoadedVersion, Depends(get_loaded)]


async def get_blocked_rows(request: Request, loaded: LoadedDep) -> np.ndarray:
    """Rows of the served version that the blocklist in force withholds (cached per version;
    the reloader and the blocklist watcher fill the cache in a worker thread before a swap)."""
    return request.app.state.blocklist.current.rows_for(loaded)


BlockedRowsDep = Annotated[np.ndarray, Depends(get_blocked_rows)]
MaybeLoadedDep = Annotated[LoadedVersion | None, Depends(get_loaded_or_none)]
