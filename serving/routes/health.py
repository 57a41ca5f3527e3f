"""``GET /health``: which version is served, or 503 while there is none."""

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from serving.deps import MaybeLoadedDep
from serving.schemas import Health, NoVersion

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": NoVersion}},
)
def health(loaded: MaybeLoadedDep) -> Health | JSONResponse:
    if loaded is None:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content=NoVersion().model_dump()
        )
    return Health(version=loaded.version, n_items=loaded.n_items, dim=loaded.dim)
