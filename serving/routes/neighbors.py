"""The neighbour endpoints; every answer names the version it came from.

- ``GET /items/{item_id}/similar?k=&market=&exclude=``: the items closest to one item.
- ``GET /items/{item_id}``: one item's vector, market and version.
- ``POST /similar``: neighbours of the mean of several items (the inputs excluded), or of a
  vector taken from the served version (another version's vector: 409).
- ``POST /similar/batch``: each of many items' own neighbours; unknown ids are listed, not fatal.

No answer ever holds an item of the blocklist in force (``serving.blocklist``); a blocked item
can still be the query, and ``GET /items/{item_id}`` says ``is_blocked``.

Errors are JSON: 404 for an unknown item, 409 for a vector of another version (or of another
dim), 422 for bad parameters (``k`` below 1, oversized lists or ids, a vector non-finite or all
zeros, a batch over the cost cap), 413 for a body over the limit, 429 when too many batches run,
503 (with ``Retry-After``) while no version is loaded. ``k`` above ``max_k`` is capped, and the
answer's ``k`` says the value used. A handler takes the loaded version once, so one answer never
mixes two versions.
"""

import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import StringConstraints

from serving.deps import BlockedRowsDep, BlocklistDep, LoadedDep
from serving.fast_path import similar_items_body
from serving.limits import HeavySlotDep
from serving.model import LoadedVersion
from serving.model import Neighbor as ModelNeighbor
from serving.requests import (
    DEFAULT_K,
    MAX_ID_LENGTH,
    BatchQuery,
    BatchResult,
    ItemNeighbors,
    ItemVector,
    SimilarQuery,
    SimilarResult,
)
from serving.schemas import ErrorDetail, Neighbor, SimilarItems
from serving.searcher import off_loop

MAX_LISTED_UNKNOWN = 20  # a 404 names at most this many unknown ids
# ids in a query string: every schema-valid URL then fits the server's request-line limit
# (serving.__main__.MAX_REQUEST_HEAD_BYTES), even with every character percent-encoded
MAX_QUERY_IDS = 50

ItemIdPath = Annotated[str, Path(max_length=MAX_ID_LENGTH)]
KQuery = Annotated[
    int, Query(ge=1, description="number of neighbours; values above max_k are capped to it")
]
MarketQuery = Annotated[
    str | None, Query(max_length=MAX_ID_LENGTH, description="only items of this market")
]
ExcludeQuery = Annotated[
    list[Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]],
    Query(
        max_length=MAX_QUERY_IDS,
        description="item ids never returned; repeat the parameter (POST /similar takes more)",
    ),
]

_NOT_FOUND = {status.HTTP_404_NOT_FOUND: {"model": ErrorDetail}}
_NO_VERSION = {status.HTTP_503_SERVICE_UNAVAILABLE: {"model": ErrorDetail}}
_TOO_LARGE = {status.HTTP_413_CONTENT_TOO_LARGE: {"model": ErrorDetail}}
_BUSY = {status.HTTP_429_TOO_MANY_REQUESTS: {"model": ErrorDetail}}


class JsonSafeErrorsRoute(APIRoute):
    """A route whose 422 stays valid JSON when the rejected input holds NaN or infinities.

    Starlette parses the JSON extensions ``NaN``/``Infinity``; pydantic rejects them, but its
    error echoes the input, and FastAPI's 422 handler then fails to encode it (strict JSON): a
    500. The errors are re-raised here with each non-finite float written as a string.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_safe_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise RequestValidationError(
                    _json_safe(exc.errors()), body=_json_safe(exc.body)
                ) from None

        return json_safe_handler


def build_router(max_k: int) -> APIRouter:
    """The neighbour routes, with ``k`` capped at ``max_k`` (from config at app creation)."""
    router = APIRouter(tags=["neighbors"], route_class=JsonSafeErrorsRoute)
    # registered before GET /items/{item_id}: both take '/' in ids (sent as %2F), and Starlette
    # tries routes in order, so '/items/a/similar' must meet this one first
    _add_similar_items(router, max_k)
    _add_get_item(router)
    _add_similar_to_query(router, max_k)
    _add_similar_batch(router, max_k)
    return router


def _add_similar_items(router: APIRouter, max_k: int) -> None:
    """``GET /items/{item_id}/similar``."""
    default_k = min(DEFAULT_K, max_k)

    @router.get(
        "/items/{item_id:path}/similar",
        response_model=SimilarItems,
        responses={**_NOT_FOUND, **_NO_VERSION},
    )
    async def similar_items(
        request: Request,
        item_id: ItemIdPath,
        loaded: LoadedDep,
        blocked: BlockedRowsDep,
        k: KQuery = default_k,
        market: MarketQuery = None,
        exclude: ExcludeQuery = [],  # noqa: B006 -- FastAPI copies defaults per request
    ) -> Response:
        # the hot path: the search runs on a searcher thread (serving.searcher), in parallel
        # with the event loop's HTTP work, and the answer is written straight to JSON
        # (response-model validation would cost more than the search). SimilarItems' shape.
        k = min(k, max_k)
        try:
            neighbors = await off_loop(
                request.app,
                loaded.similar,
                item_id,
                k,
                market=market,
                exclude=exclude,
                blocked_rows=blocked,
            )
        except KeyError:
            raise _unknown(loaded, [item_id]) from None
        body = similar_items_body(loaded, item_id, k, neighbors)
        return Response(body, media_type="application/json")


def _add_get_item(router: APIRouter) -> None:
    """``GET /items/{item_id}``."""

    @router.get(
        "/items/{item_id:path}",
        response_model=ItemVector,
        responses={**_NOT_FOUND, **_NO_VERSION},
    )
    async def get_item(
        item_id: ItemIdPath, loaded: LoadedDep, request: Request, _: BlocklistDep
    ) -> ItemVector:
        row = loaded.row_of.get(item_id)
        if row is None:
            raise _unknown(loaded, [item_id])
        return ItemVector(
            version=loaded.version,
            item_id=item_id,
            market=loaded.markets[row],
            vector=loaded.vectors[row].tolist(),
            is_cold_start=None if loaded.is_cold_start is None else bool(loaded.is_cold_start[row]),
            is_blocked=item_id in request.app.state.blocklist.current,
        )


def _add_similar_to_query(router: APIRouter, max_k: int) -> None:
    """``POST /similar``."""

    @router.post(
        "/similar",
        response_model=SimilarResult,
        responses={
            **_NOT_FOUND,
            status.HTTP_409_CONFLICT: {"model": ErrorDetail},
            **_TOO_LARGE,
            **_NO_VERSION,
        },
    )
    async def similar_to_query(
        request: Request, query: SimilarQuery, loaded: LoadedDep, blocked: BlockedRowsDep
    ) -> SimilarResult:
        k = min(query.k, max_k)
        vector, exclude = _query_vector(query, loaded)
        try:
            neighbors = await off_loop(
                request.app,
                loaded.similar_to_vector,
                vector,
                k,
                market=query.market,
                exclude=exclude,
                blocked_rows=blocked,
            )
        except ValueError as exc:  # wrong dim (finite and non-zero: SimilarQuery checked)
            raise HTTPException(
                status_code=status.HTTP_409_CONFLICT,
                detail=f"{exc}: not a vector of version {loaded.version} (dim {loaded.dim}); "
                "fetch it again from GET /items/{item_id}",
            ) from None
        return SimilarResult(version=loaded.version, k=k, neighbors=_public(neighbors))


def _add_similar_batch(router: APIRouter, max_k: int) -> None:
    """``POST /similar/batch``."""

    # sync on purpose: up to MAX_IDS searches, run in the framework's threadpool (not on the
    # searcher threads, which a long batch would hold while single queries wait behind it)
    @router.post(
        "/similar/batch",
        response_model=BatchResult,
        responses={**_TOO_LARGE, **_BUSY, **_NO_VERSION},
    )
    def similar_batch(
        query: BatchQuery, loaded: LoadedDep, blocked: BlockedRowsDep, _: HeavySlotDep
    ) -> BatchResult:
        k = min(query.k, max_k)
        results: list[ItemNeighbors] = []
        unknown: list[str] = []
        for item_id in query.item_ids:
            if item_id not in loaded.row_of:
                unknown.append(item_id)
                continue
            neighbors = loaded.similar(item_id, k, market=query.market, blocked_rows=blocked)
            results.append(ItemNeighbors(item_id=item_id, neighbors=_public(neighbors)))
        return BatchResult(version=loaded.version, k=k, results=results, unknown=unknown)


def _query_vector(query: SimilarQuery, loaded: LoadedVersion) -> tuple[np.ndarray, list[str]]:
    """(the vector ``POST /similar`` searches around, the ids never returned).

    Raises:
        HTTPException: 404 for unknown ``item_ids``, 409 for a vector of another version.
        RequestValidationError: the items' vectors cancel out (a 422).
    """
    exclude: list[str] = list(query.exclude)
    if query.item_ids is None:
        if query.version != loaded.version:
            raise HTTPException(
                status_code=status.HTTP_409_CONFLICT,
                detail=(
                    f"vector is from version {query.version!r} but version "
                    f"{loaded.version} is served; vectors of different versions are not "
                    f"comparable: fetch it again from GET /items/{{item_id}}"
                ),
            )
        return _rescaled(query.vector), exclude
    unknown = [i for i in query.item_ids if i not in loaded.row_of]
    if unknown:
        raise _unknown(loaded, unknown)
    rows = [loaded.row_of[i] for i in query.item_ids]
    vector = loaded.vectors[rows].astype(np.float64).mean(axis=0)  # (dim,)
    exclude.extend(query.item_ids)
    if not np.any(vector):  # a 422 of the validation shape the spec documents
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ["body", "item_ids"],
                    "msg": "the items' vectors cancel out: their mean has no direction",
                    "input": query.item_ids,
                }
            ]
        )
    return vector, exclude


def _public(neighbors: Sequence[ModelNeighbor]) -> list[Neighbor]:
    return [Neighbor(item_id=n.item_id, score=n.score, market=n.market) for n in neighbors]


def _unknown(loaded: LoadedVersion, item_ids: Sequence[str]) -> HTTPException:
    """404 naming the unknown ids (the first ``MAX_LISTED_UNKNOWN`` of them)."""
    if len(item_ids) == 1:
        detail = f"unknown item_id {item_ids[0]!r} in version {loaded.version}"
    else:
        listed = ", ".join(repr(i) for i in item_ids[:MAX_LISTED_UNKNOWN])
        more = len(item_ids) - MAX_LISTED_UNKNOWN
        detail = f"unknown item_ids {listed}{f' and {more} more' if more > 0 else ''}"
        detail += f" in version {loaded.version}"
    return HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=detail)


def _rescaled(vector: Sequence[float] | None) -> np.ndarray:
    """``vector`` divided by its largest magnitude, so its norm cannot overflow (1e308s)."""
    values = np.asarray(vector, dtype=np.float64)  # (n,) finite: validated by SimilarQuery
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    return values / peak if peak > 0.0 else values


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by its repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value
