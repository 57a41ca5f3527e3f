"""Public response models of the service: what clients see, apart from how versions are held."""

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str = Field(description="version id being served, as named by CURRENT")
    n_items: int
    dim: int


class NoVersion(BaseModel):
    status: Literal["no_version"] = "no_version"


class Neighbor(BaseModel):
    item_id: str
    score: float = Field(description="cosine similarity to the query item, in [-1, 1]")
    market: str | None = None


class SimilarItems(BaseModel):
    version: str
    item_id: str
    k: int = Field(description="neighbours asked for; fewer only when the version is that small")
    neighbors: list[Neighbor] = Field(description="most similar first; never the query item")


class ErrorDetail(BaseModel):
    detail: str
