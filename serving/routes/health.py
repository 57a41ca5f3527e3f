"""``GET /health`` and ``GET /version``: which version is served, how old it is.

``/health`` answers 200 "ok"; 503 "blocklist_unavailable" while a configured blocklist was never
read (the item routes are closed meanwhile); 503 "stale" when the version's manifest
``created_at`` is older than ``ServingConfig.max_version_age_hours`` (the pipeline stopped
publishing); 503 "no_version" while nothing is loaded. ``/version`` describes the served version.
"""

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse

from serving.deps import MaybeLoadedDep
from serving.model import LoadedVersion
from serving.schemas import BlocklistUnavailable, ErrorDetail, Health, NoVersion, VersionInfo

router = APIRouter(tags=["health"])


def created_at(loaded: LoadedVersion) -> datetime | None:
    """The manifest's ``created_at`` as an aware datetime (naive ones taken as UTC)."""
    value = loaded.manifest.get("created_at")
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def age_s(loaded: LoadedVersion) -> float | None:
    created = created_at(loaded)
    return None if created is None else (datetime.now(UTC) - created).total_seconds()


@router.get(
    "/health",
    response_model=Health,
    responses={
        status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Health | NoVersion | BlocklistUnavailable}
    },
)
async def health(loaded: MaybeLoadedDep, request: Request) -> Health | JSONResponse:
    watcher = request.app.state.blocklist
    if not watcher.ready:  # item routes are closed: see serving.deps.require_blocklist
        body = BlocklistUnavailable(
            reason=watcher.problem or "not read yet",
            version=loaded.version if loaded is not None else None,
        )
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content=body.model_dump()
        )
    if loaded is None:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content=NoVersion().model_dump()
        )
    age = age_s(loaded)
    max_hours = request.app.state.serving_cfg.max_version_age_hours
    stale = age is not None and max_hours is not None and age > max_hours * 3600
    body = Health(
        status="stale" if stale else "ok",
        version=loaded.version,
        n_items=loaded.n_items,
        dim=loaded.dim,
        age_s=None if age is None else round(age, 3),
        index=loaded.index_source,
    )
    if stale:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content=body.model_dump()
        )
    return body


@router.get(
    "/version",
    response_model=VersionInfo,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": ErrorDetail}},
)
async def version(loaded: MaybeLoadedDep, request: Request) -> VersionInfo:
    if loaded is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no version loaded")
    stamp = request.app.state.loaded_at
    created = loaded.manifest.get("created_at")
    return VersionInfo(
        version=loaded.version,
        created_at=None if created is None else str(created),
        data_interval=loaded.manifest.get("data_interval"),
        loaded_at=stamp[1] if stamp is not None and stamp[0] == loaded.version else None,
        n_items=loaded.n_items,
        dim=loaded.dim,
        index=loaded.index_source,
        index_load_s=round(loaded.index_load_s, 4),
        blocklist_items=len(request.app.state.blocklist.current),
        blocklist_loaded_at=request.app.state.blocklist.current.loaded_at,
    )
