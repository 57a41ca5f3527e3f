"""Request and response models of the neighbour endpoints (``serving.routes.neighbors``).

Every bound a client can exceed is declared here, so an oversized or malformed input is a 422
from validation, never a 500: at most ``MAX_IDS`` ids per list, ids and markets at most
``MAX_ID_LENGTH`` characters, vectors at most ``MAX_VECTOR_DIM`` finite numbers. ``k`` has no
upper bound here: the router caps it at the configured ``max_k`` and answers with the ``k`` used.
"""

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from serving.schemas import Neighbor

MAX_IDS = 1000  # item ids per request: item_ids, exclude, batch
MAX_ID_LENGTH = 256  # characters per item id or market name
MAX_VECTOR_DIM = 4096  # far above any served dim; the exact dim is checked against the version
DEFAULT_K = 10
# the cost cap: one request asks for at most this many neighbours. Written as two bounds the
# OpenAPI schema can state (so no schema-valid request is refused): k is capped at max_k, which
# is at most MAX_K_LIMIT; a batch of more than MAX_IDS_AT_ANY_K ids takes k <= MAX_K_LARGE_BATCH
MAX_NEIGHBORS = 10_000
MAX_K_LIMIT = 100  # the highest ServingConfig.max_k
MAX_IDS_AT_ANY_K = MAX_NEIGHBORS // MAX_K_LIMIT  # 100
MAX_K_LARGE_BATCH = MAX_NEIGHBORS // MAX_IDS  # 10

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
Market = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
K = Annotated[int, Field(ge=1, description="neighbours wanted; capped at the service's max_k")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not silently ignored


# "exactly one of item_ids or vector; version with vector only", written into the JSON schema
# so that the OpenAPI spec accepts exactly the bodies the service does
_ONE_QUERY_SCHEMA = {
    "oneOf": [
        {"required": ["item_ids"], "not": {"anyOf": [{"required": ["vector"]},
                                                     {"required": ["version"]}]}},
        {"required": ["vector", "version"], "not": {"required": ["item_ids"]}},
    ]
}  # fmt: skip


class SimilarQuery(_Request):
    """``POST /similar``: neighbours of several items together, or of a vector.

    Exactly one of ``item_ids`` (the normalised mean of their vectors is the query; the inputs
    are never returned) or ``vector`` with the ``version`` it came from (vectors of different
    versions live in different spaces: another version's vector is refused with 409). The
    fields are absent, never null, when unused.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_QUERY_SCHEMA)

    # typed without None: an explicit null is a 422, as the schema says; absent is None
    item_ids: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_IDS)] = None  # type: ignore[assignment]
    vector: Annotated[
        list[FiniteFloat],
        Field(
            min_length=1,
            max_length=MAX_VECTOR_DIM,
            json_schema_extra={"contains": {"not": {"const": 0}}},  # not all zeros
            description="of the served version's dim (another dim: 409), not all zeros",
        ),
    ] = None  # type: ignore[assignment]
    version: Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)] = Field(  # type: ignore[assignment]
        None, description="the version `vector` was taken from; required with `vector`"
    )
    k: K = DEFAULT_K
    market: Market | None = Field(None, description="only items of this market")
    exclude: Annotated[list[ItemId], Field(max_length=MAX_IDS)] = Field(
        default_factory=list, description="item ids never returned"
    )

    @model_validator(mode="after")
    def _one_query(self) -> Self:
        if (self.item_ids is None) == (self.vector is None):
            raise ValueError("give exactly one of 'item_ids' or 'vector'")
        if self.vector is not None and self.version is None:
            raise ValueError("'vector' needs the 'version' it was taken from")
        if self.item_ids is not None and self.version is not None:
            raise ValueError("'version' only goes with 'vector'")
        if self.vector is not None and not any(self.vector):
            raise ValueError("'vector' is all zeros: it has no direction to compare")
        return self


class SimilarResult(BaseModel):
    version: str = Field(description="the version that answered")
    k: int = Field(description="neighbours asked for after capping at max_k")
    neighbors: list[Neighbor] = Field(description="most similar first; never a query item")


class BatchQuery(_Request):
    """``POST /similar/batch``: each item's own neighbours, for many items in one call."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # the cost cap, as _cost_cap enforces it
            "if": {"properties": {"item_ids": {"minItems": MAX_IDS_AT_ANY_K + 1}}},
            "then": {"properties": {"k": {"maximum": MAX_K_LARGE_BATCH}}},
        },
    )

    item_ids: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_IDS)]
    k: K = DEFAULT_K
    market: Market | None = Field(None, description="only items of this market")

    @model_validator(mode="after")
    def _cost_cap(self) -> Self:
        if len(self.item_ids) > MAX_IDS_AT_ANY_K and self.k > MAX_K_LARGE_BATCH:
            raise ValueError(
                f"cost cap: {len(self.item_ids)} ids x k={self.k} asks for more than "
                f"{MAX_NEIGHBORS} neighbours; a batch of more than {MAX_IDS_AT_ANY_K} ids takes "
                f"k <= {MAX_K_LARGE_BATCH}: split it or lower k"
            )
        return self


class ItemNeighbors(BaseModel):
    item_id: str
    neighbors: list[Neighbor] = Field(description="most similar first; never the item itself")


class BatchResult(BaseModel):
    version: str = Field(description="the one version that answered the whole batch")
    k: int = Field(description="neighbours asked for after capping at max_k")
    results: list[ItemNeighbors] = Field(description="one per known item id, in request order")
    unknown: list[str] = Field(description="requested ids not in this version, in request order")


class ItemVector(BaseModel):
    version: str
    item_id: str
    market: str | None = None
    vector: list[float] = Field(description="unit-norm vector; comparable only within `version`")
    is_cold_start: bool | None = Field(
        None, description="whether the vector was inferred for a cold-start item; null if unknown"
    )
    is_blocked: bool = Field(
        False, description="on the service's blocklist: never returned as a neighbour"
    )
