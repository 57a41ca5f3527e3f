"""``SessionizeResult``: the summary the sessionize job (``jobs.sessionize``) returns and writes,
and the stages, the CLI and the manifest read: what it read, what it kept, where every row went.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class SessionizeResult:
    """What a sessionize run read and wrote; every input row is counted in exactly one place:
    rows_read = dropped + quarantined + duplicates + outside_days + events_valid, and
    events_valid = short_dwell_dropped + short_session_events + session_events, where the kept
    sessions' events are session_items + collapsed_repeats + truncated_events."""

    days: list[str]
    work_dir: str
    rows_read: int = 0
    dropped_by_type: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    outside_days: int = 0
    events_valid: int = 0
    short_dwell_dropped: int = 0
    short_sessions: int = 0
    short_session_events: int = 0
    session_events: int = 0
    session_items: int = 0
    collapsed_repeats: int = 0
    truncated_sessions: int = 0
    truncated_events: int = 0
    sessions_cut_at_midnight: int = 0
    sessions: int = 0
    conversions: int = 0
    booking_pairs: int = 0
    quarantine_path: str | None = None
    item_table: dict | None = None  # jobs.items.ItemTableResult, when an item table was given
    kept_days: list[str] = field(default_factory=list)  # complete days the input lacks: kept
    user_salt_source: str | None = None  # "env:<NAME>" or "file": nothing derived from it
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SessionizeResult:
        """From ``to_dict``'s output (a child job's JSON summary); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
