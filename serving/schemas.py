"""Public response models of the service: what clients see, apart from how versions are held."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok", "stale"] = Field(
        "ok", description="stale (with HTTP 503): the version is older than max_version_age_hours"
    )
    version: str = Field(description="version id being served, as named by CURRENT")
    n_items: int
    dim: int
    age_s: float | None = Field(
        description="seconds since the version's manifest created_at (None: not recorded)"
    )
    index: str = Field(description="prebuilt, built (at load time) or exact (no ANN index)")


class VersionInfo(BaseModel):
    version: str
    created_at: str | None = Field(description="when the version was published (manifest)")
    data_interval: Any = Field(None, description="the days trained on, as the manifest says")
    loaded_at: datetime | None = Field(description="when this process started serving it (UTC)")
    n_items: int
    dim: int
    index: str
    index_load_s: float
    blocklist_items: int = Field(0, description="ids on the blocklist in force")
    blocklist_loaded_at: datetime | None = Field(
        None, description="when the blocklist in force was read (None: no blocklist file)"
    )


class Reloaded(BaseModel):
    version: str = Field(description="version served after the reload")
    previous: str | None = Field(description="version served before it (None: none was)")
    changed: bool = Field(description="false: the version asked for was already served")
    load_s: float = Field(description="seconds spent reading, verifying and indexing it")
    blocklist_items: int = Field(0, description="ids on the blocklist in force after the reload")


class ReloadRefused(BaseModel):
    detail: str = Field(description="why the version was refused")
    version: str | None = Field(description="version still served (None: none)")


class NoVersion(BaseModel):
    status: Literal["no_version"] = "no_version"


class BlocklistUnavailable(BaseModel):
    status: Literal["blocklist_unavailable"] = "blocklist_unavailable"
    reason: str = Field(description="why the configured blocklist could not be read")
    version: str | None = Field(description="version loaded (None: none), not served meanwhile")


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
