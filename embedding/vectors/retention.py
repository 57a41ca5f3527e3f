"""Rollback and retention: operations on a publish root that move CURRENT back or delete folders.

Input: a publish root (``<root>/versions/``, ``<root>/rejected/``, ``CURRENT``, ``PINNED``).
Output: CURRENT pinned back to an older version, or version folders deleted; what the
publisher (``embedding.vectors.publish``) also reads: the pin and the previous version.

- ``rollback(root, version)`` points CURRENT back at an existing, verified version and writes
  ``<root>/PINNED`` (JSON: ``version``, ``pinned_at``, ``newest_at_pin``, ``previous_current``),
  the pin first, then CURRENT, both by atomic rename.
- While PINNED exists, CURRENT moves only to a version trained on a day later than
  ``newest_at_pin`` (the newest version present when the pin was set); that move removes the
  pin (``embedding.vectors.publish.move_current``). Publishing or re-finishing any version of
  that day or older (the bad version that was rolled back, a backfill) leaves CURRENT and the
  pin alone.
- ``apply_version_retention(root, keep)`` deletes version folders beyond the newest ``keep``
  (by day), never CURRENT, the version before it or the pinned one, and rejected candidates
  beyond the newest ``keep``; each folder is renamed to ``.tmp/.deleting-*`` and then removed,
  so a crash never leaves a half-deleted folder that looks like a version.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from embedding.core.atomic import rename_durably
from embedding.core.atomic import write_text_atomic as _write_atomic
from embedding.core.errors import InputError, PublishError
from embedding.vectors.versions import (
    CURRENT,
    MANIFEST,
    VERSION_ID,
    VERSIONS,
    current_or_none,
    verify_version,
    version_day,
    version_names,
)

logger = logging.getLogger(__name__)

REJECTED = "rejected"
TMP = ".tmp"
PINNED = "PINNED"
DELETING = ".deleting-"


def check_version_id(version: str) -> str:
    """``version`` if it is a version id (``<YYYYMMDD>-<8 hex>``), else InputError: an id
    from a user never reaches the file system as a path (``../x``, ``a/b``)."""
    if not isinstance(version, str) or not VERSION_ID.fullmatch(version):
        raise InputError(
            f"{version!r} is not a version id (expected <YYYYMMDD>-<8 hex>, e.g. 20260108-1a2b3c4d)"
        )
    return version


def previous_version(root: Path, before_day: str) -> str | None:
    """The latest complete published version trained on days before ``before_day``
    (YYYYMMDD): the latest last day wins; among versions of that day, ``CURRENT``, else the
    last by name. None for the first version.

    While a rollback pin holds, versions trained after the pinned one are not served, so they
    are skipped: the pinned version (what readers get) is the one to compare against."""
    folder = root / VERSIONS
    pin = read_pin(root, strict=False)
    ceiling = version_day(pin["version"]) if pin else None
    days = {
        name: version_day(name)
        for name in version_names(root)
        if version_day(name) < before_day
        and (ceiling is None or version_day(name) <= ceiling)
        and (folder / name / MANIFEST).is_file()
    }
    if not days:
        return None
    latest = max(days.values())
    current = current_or_none(root)
    if current in days and days[current] == latest:
        return current
    return max(name for name, day in days.items() if day == latest)


def read_pin(root: Path, strict: bool = True) -> dict | None:
    """The rollback pin (``<root>/PINNED``), None when CURRENT is not pinned. An unreadable
    marker raises PublishError (``strict``) or reads as no pin (``strict=False``, for callers
    that only pick a comparison version)."""
    path = root / PINNED
    if not path.is_file():
        return None
    try:
        pin = json.loads(path.read_text())
        for key in ("version", "newest_at_pin", "pinned_at"):
            if not isinstance(pin.get(key), str):
                raise ValueError(f"no {key!r}")
    except (ValueError, AttributeError) as exc:
        if not strict:
            return None
        raise PublishError(
            f"{path}: unreadable rollback pin ({exc}); run `python -m embedding rollback "
            "<version>` again or delete it to lift the pin"
        ) from exc
    return pin


@dataclass(frozen=True)
class RollbackResult:
    version: str  # CURRENT now, pinned
    previous_current: str | None  # CURRENT before the rollback
    pinned_at: str
    newest_at_pin: str  # only a version trained after this one's day moves CURRENT again


def rollback(root: Path, version: str) -> RollbackResult:
    """Point CURRENT at the existing, verified ``version`` (usually older than CURRENT) and pin
    it: until a version trained after every version present now is published, no publish or
    rerun moves CURRENT (see ``embedding.vectors.publish.move_current``).

    Raises InputError for an id that is not a version id or names no published version, and
    PublishError for a version whose files do not match its manifest."""
    check_version_id(version)
    folder = root / VERSIONS / version
    if not folder.is_dir():
        rejected = (root / REJECTED / version).is_dir()
        why = (
            "it failed the quality gate (rejected/), so it was never published"
            if rejected
            else ("`python -m embedding versions` lists the published ones")
        )
        raise InputError(f"cannot roll back to {version}: not published under {root}; {why}")
    try:
        verify_version(folder)
    except PublishError as exc:
        raise PublishError(f"cannot roll back to {version}: {exc}") from exc
    previous = current_or_none(root)
    newest = [version, *version_names(root)]
    if previous is not None and VERSION_ID.fullmatch(previous):
        newest.append(previous)
    old_pin = read_pin(root, strict=False)
    if old_pin is not None and VERSION_ID.fullmatch(old_pin["newest_at_pin"]):
        newest.append(old_pin["newest_at_pin"])  # a second rollback keeps the first one's bar
    newest_at_pin = max(newest, key=lambda name: (version_day(name), name))
    pinned_at = datetime.now(UTC).isoformat(timespec="seconds")
    marker = {
        "version": version,
        "pinned_at": pinned_at,
        "newest_at_pin": newest_at_pin,
        "previous_current": previous,
    }
    # the pin first: a crash in between leaves CURRENT where it was, and already pinned
    _write_atomic(root / PINNED, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    _write_atomic(root / CURRENT, version + "\n")
    logger.info(
        "rollback: CURRENT -> %s (was %s), pinned until a version trained after %s",
        version,
        previous,
        version_day(newest_at_pin),
    )
    return RollbackResult(version, previous, pinned_at, newest_at_pin)


def _created_at(folder: Path) -> str:
    try:
        return str(json.loads((folder / MANIFEST).read_text()).get("created_at", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _newest_first(root: Path, kind: str) -> list[str]:
    """Folders of ``kind``, newest first: by day, then creation time, then name."""
    names = version_names(root, kind)
    return sorted(
        names,
        key=lambda name: (version_day(name), _created_at(root / kind / name), name),
        reverse=True,
    )


def delete_folder(root: Path, kind: str, name: str) -> None:
    """Rename out of ``kind`` first (atomic), then remove: never a half-deleted version."""
    scratch = root / TMP
    scratch.mkdir(parents=True, exist_ok=True)
    doomed = scratch / f"{DELETING}{kind}-{name}-{uuid.uuid4().hex[:8]}"
    rename_durably(root / kind / name, doomed)
    shutil.rmtree(doomed)


def _remove_stale_deletions(root: Path) -> None:
    """Finish deletions a crash interrupted (their folders are already out of sight)."""
    scratch = root / TMP
    for path in scratch.glob(f"{DELETING}*") if scratch.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)


def apply_version_retention(root: Path, keep: int, protect: Iterable[str] = ()) -> list[str]:
    """Delete the version folders beyond the newest ``keep`` (by day, then creation time) and
    the rejected candidates beyond the newest ``keep``. Never deleted: CURRENT, the published
    version before it (``previous_version``, the fallback a reader may still hold), the pinned
    version, and ``protect``. Returns what was deleted, as ``versions/<v>`` and
    ``rejected/<v>``, oldest last."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    _remove_stale_deletions(root)
    current = current_or_none(root)
    pin = read_pin(root)  # an unreadable pin: delete nothing rather than guess
    kept = set(protect)
    if current is not None:
        kept.add(current)
        before = previous_version(root, version_day(current))
        if before is not None:
            kept.add(before)
    if pin is not None:
        kept.add(pin["version"])
    deleted = []
    for kind, spared in ((VERSIONS, kept), (REJECTED, set())):
        for name in _newest_first(root, kind)[keep:]:
            if name in spared:
                continue
            delete_folder(root, kind, name)
            deleted.append(f"{kind}/{name}")
            logger.info("retention: deleted %s/%s", kind, name)
    return deleted
