"""The quality gate: the published candidate's metric against an absolute floor, the popularity
baseline (with a bootstrap lower bound on the lift) and the previous version; the verdict as a
typed GateVerdict (what the manifest's gate holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from embedding.core.config import GateConfig


@dataclass(frozen=True)
class GateVerdict:
    """The quality gate's verdict; ``to_dict`` is the manifest's ``gate``."""

    passed: bool
    reason: str
    metric: str | None = None
    value: float | None = None
    required: float | None = None
    lift_lower_bound: float | None = None
    previous_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> GateVerdict:
        """From a manifest's ``gate`` (an older or empty one: missing fields None, not passed)."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**{"passed": False, "reason": "", **known})


def check_gate(metrics: dict, candidate: str, gate: GateConfig) -> GateVerdict:
    """Gate verdict for ``candidate``: its metric must reach ``min_value``, beat popularity by
    ``min_lift_over_popularity`` (when ``metrics["lift_ci"]`` holds the candidate's bootstrap,
    with that confidence: the bound's lower end above 0) and, when a previous version exists
    (``metrics["previous"]``, re-scored on the same cases), not fall below it by more than
    ``max_drop_vs_previous``."""
    value = metrics[candidate][gate.metric]
    baseline = metrics["popularity"][gate.metric]
    needed = max(gate.min_value, baseline * gate.min_lift_over_popularity)
    reasons = [
        f"min_value {gate.min_value}, popularity {baseline:.4f} x {gate.min_lift_over_popularity}"
    ]
    lift = metrics.get("lift_ci", {}).get(candidate)
    confident = True
    if lift is not None:
        confident = lift["lower"] is not None and lift["lower"] > 0
        lower = "none" if lift["lower"] is None else f"{lift['lower']:+.4f}"
        reasons.append(
            f"lift over popularity {lift['diff']:+.4f}, {lift.get('confidence', 0):.0%} lower "
            f"bound {lower} ({'> 0' if confident else 'not > 0'}, {lift['n_sessions']} sessions)"
        )
    previous = metrics.get("previous")
    if previous:
        floor = previous[gate.metric] * (1 - gate.max_drop_vs_previous)
        needed = max(needed, floor)
        reasons.append(
            f"previous {previous['version']} {previous[gate.metric]:.4f} x "
            f"{1 - gate.max_drop_vs_previous:.2f}"
        )
    else:
        reasons.append("no previous version")
    passed = value >= needed and confident and metrics["n_cases"] > 0
    reason = (
        f"{candidate} {gate.metric} {value:.4f} {'>=' if passed else '<'} required {needed:.4f} "
        f"({'; '.join(reasons)})"
    )
    if metrics["n_cases"] == 0:
        reason = "no evaluation cases in the holdout"
    return GateVerdict(
        passed=bool(passed),
        metric=gate.metric,
        value=value,
        required=needed,
        lift_lower_bound=lift["lower"] if lift is not None else None,
        previous_version=previous["version"] if previous else None,
        reason=reason,
    )
