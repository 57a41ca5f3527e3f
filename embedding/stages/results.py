"""What the stages return: typed records, read by attribute (the CLI, the gate, the publish stage,
the DAG) and turned into plain dicts only at the edges (XCom, JSON artefacts, the manifest).

``SessionizeResult`` (the sessionize stage's) lives in ``embedding.core.ingest_summary``, beside
the job that writes it; ``RunPlan`` (the plan stage's) in ``embedding.stages.plan``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from embedding.core.ingest_summary import SessionizeResult
from embedding.quality.gate import GateVerdict
from embedding.stages.plan import RunPlan


def _known(cls: type, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Evaluation:
    """The evaluate stage's result. ``metrics`` keeps the manifest's shape (CONTRACTS §2): one
    entry per candidate and baseline, the selection, the published candidate, the previous
    version's scores."""

    metrics: dict[str, Any]
    gate: GateVerdict

    @property
    def published(self) -> str:
        """The candidate chosen on validation (the one the gate judged)."""
        return self.metrics["published"]

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "gate": self.gate.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Evaluation:
        return cls(dict(data.get("metrics") or {}), GateVerdict.from_dict(data.get("gate") or {}))


@dataclass(frozen=True)
class ColdStart:
    """The cold-start stage's result: how many item-table items got a vector and how well."""

    enabled: bool
    n_table_items: int = 0
    n_cold_start: int = 0
    k: int | None = None
    coverage_trained: float | None = None  # share of the item table trained on
    coverage: float | None = None  # ... with the cold-start rows added
    measured: dict | None = None  # on trained items held out for it (cold_start.measure_items)

    def to_dict(self) -> dict:
        """As in the manifest: the fields a disabled or table-less run has not, left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> ColdStart:
        return cls(**_known(cls, {"enabled": False, **data}))


@dataclass(frozen=True)
class Published:
    """The publish stage's result (``embedding.vectors.publish.PublishResult`` and the data
    interval it covers)."""

    version: str
    path: str
    already_published: bool
    current_moved: bool
    current: str | None
    data_interval: tuple[str, str]
    deleted: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "data_interval": list(self.data_interval)}

    @classmethod
    def from_dict(cls, data: dict) -> Published:
        known = _known(cls, data)
        known["data_interval"] = tuple(known["data_interval"])
        known["deleted"] = tuple(known.get("deleted", ()))
        return cls(**known)


@dataclass(frozen=True)
class PipelineResult:
    """Every stage's result of one ``run_pipeline``."""

    plan: RunPlan
    ingest: SessionizeResult
    evaluation: Evaluation
    cold_start: ColdStart
    published: Published
    extra: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        """The metrics as the manifest records them (cold start included)."""
        return manifest_metrics(self.evaluation, self.cold_start)


def manifest_metrics(evaluation: Evaluation, cold_start: ColdStart) -> dict:
    """The manifest's ``metrics``: the evaluation's, with the cold-start stage's result."""
    return {**evaluation.metrics, "cold_start": cold_start.to_dict()}
