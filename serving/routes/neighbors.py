"""``GET /items/{item_id}/similar?k=``: the items closest to one item in the served version."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from serving.deps import LoadedDep
from serving.schemas import ErrorDetail, Neighbor, SimilarItems

DEFAULT_K = 10


def build_router(max_k: int) -> APIRouter:
    """The router with ``k`` bounded by ``max_k``, which comes from config at app creation."""
    router = APIRouter(prefix="/items", tags=["neighbors"])

    @router.get(
        "/{item_id:path}/similar",  # :path so that ids containing '/' (sent as %2F) still match
        response_model=SimilarItems,
        responses={
            status.HTTP_404_NOT_FOUND: {"model": ErrorDetail},
            status.HTTP_503_SERVICE_UNAVAILABLE: {"model": ErrorDetail},
        },
    )
    def similar_items(
        item_id: str,
        loaded: LoadedDep,
        k: Annotated[int, Query(ge=1, le=max_k, description="number of neighbours")] = min(
            DEFAULT_K, max_k
        ),
    ) -> SimilarItems:
        try:
            neighbors = loaded.similar(item_id, k)
        except KeyError:
            raise HTTPException(
                status_code=status.HTTP_404_NOT_FOUND,
                detail=f"unknown item_id {item_id!r} in version {loaded.version}",
            ) from None
        return SimilarItems(
            version=loaded.version,
            item_id=item_id,
            k=k,
            neighbors=[
                Neighbor(item_id=n.item_id, score=n.score, market=n.market) for n in neighbors
            ],
        )

    return router
