"""Publish: versioned item vectors with a manifest, appearing atomically (CONTRACTS §2).

Input: final ``ItemVectors`` and the manifest fields gathered by the run. Output:
``<root>/versions/<version>/`` (``item_vectors.parquet``, ``manifest.json`` with the checksum
of every data file), then ``<root>/CURRENT`` replaced by an atomic rename, only forward.

Order of operations, each step a point where a crash leaves readers safe:
write into ``<root>/.tmp/<version>-<nonce>`` -> manifest -> rename into ``versions/`` (the
version appears complete or not at all) -> replace ``CURRENT``. A rerun that finds the complete
version skips straight to moving ``CURRENT``, which finishes an interrupted publish. ``fault``
is a hook called with each step's name; tests make it raise to prove the guarantees.

Rollback, its pin and version retention live in ``embedding.vectors.retention``: CURRENT moves
forward only past a rollback pin (``move_current``), and ``keep_versions`` applies
``apply_version_retention`` after a publish; its public names are re-exported here for
callers of this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath

from embedding.core import chaos
from embedding.core.atomic import fsync_dir, fsync_tree, rename_durably
from embedding.core.atomic import write_text_atomic as _write_atomic
from embedding.core.checksum import file_sha256
from embedding.core.checksum import source_hash as source_hash
from embedding.core.errors import PublishError
from embedding.core.lock import held_here
from embedding.vectors.item_vectors import ItemVectors
from embedding.vectors.parquet_io import VECTORS_FILE, write_vectors
from embedding.vectors.retention import (
    DELETING,
    PINNED,
    REJECTED,
    TMP,
    RollbackResult,
    apply_version_retention,
    check_version_id,
    delete_folder,
    previous_version,
    read_pin,
    rollback,
)
from embedding.vectors.versions import (
    CURRENT,
    MANIFEST,
    VERSIONS,
    VersionError,
    current_or_none,
    is_listed_kind,
    verify_version,
    version_day,
    version_names,
)

# this module's names and those its callers reach through it (retention, versions, checksum)
__all__ = [
    "CONTRACT_VERSION",
    "CURRENT",
    "DELETING",
    "MANIFEST",
    "PINNED",
    "REJECTED",
    "STALE_STAGING_S",
    "STEPS",
    "TMP",
    "VERSIONS",
    "FaultHook",
    "PublishResult",
    "RollbackResult",
    "apply_version_retention",
    "check_version_id",
    "current_or_none",
    "finish_publish",
    "is_published",
    "move_current",
    "previous_version",
    "publish_version",
    "read_pin",
    "reject_version",
    "remove_stale_staging",
    "rollback",
    "source_hash",
    "verify_version",
    "version_day",
    "version_id",
    "version_names",
]

FaultHook = Callable[[str], None]

logger = logging.getLogger(__name__)

CONTRACT_VERSION = 1
STALE_STAGING_S = 3600.0  # a staging folder untouched this long belongs to a crashed publish
STEPS = ("data_written", "manifest_written", "before_rename", "after_rename", "before_current")


def version_id(last_day: date, config_hash: str, code_hash: str, input_hashes: list[str]) -> str:
    """``<YYYYMMDD of the last day trained on>-<8 hex>`` over config, code and inputs."""
    digest = hashlib.sha256()
    for part in (config_hash, code_hash, *input_hashes):
        digest.update(part.encode())
    return f"{last_day:%Y%m%d}-{digest.hexdigest()[:8]}"


def is_published(root: Path, version: str) -> bool:
    try:
        verify_version(root / VERSIONS / version)
    except VersionError:
        return False
    return True


def _pin_holds(pin: dict | None, version: str) -> bool:
    """True when the pin keeps CURRENT from moving to ``version``: only a version trained
    after every version present at rollback time (``newest_at_pin``) lifts it."""
    return pin is not None and version_day(version) <= version_day(pin["newest_at_pin"])


def move_current(root: Path, version: str) -> bool:
    """Point CURRENT at ``version`` unless that would move it back to an older day, or a
    rollback pin holds (see ``embedding.vectors.retention.rollback``); a move past the pin
    removes it."""
    current = current_or_none(root)
    pin = read_pin(root)
    if _pin_holds(pin, version):
        logger.info(
            "CURRENT stays at %s: pinned to %s by a rollback at %s; only a version trained "
            "after %s moves it",
            current,
            pin["version"],
            pin["pinned_at"],
            version_day(pin["newest_at_pin"]),
        )
        return False
    if current is not None and current != version and version_day(version) < version_day(current):
        logger.info("CURRENT stays at %s: %s is older", current, version)
        return False
    moved = current != version
    if moved:
        _write_atomic(root / CURRENT, version + "\n")
        logger.info("CURRENT -> %s (was %s)", version, current)
    if pin is not None:  # also finishes a move interrupted before the pin was removed
        (root / PINNED).unlink(missing_ok=True)
        logger.info("rollback pin to %s lifted by %s", pin["version"], version)
    return moved


@dataclass(frozen=True)
class PublishResult:
    version: str
    path: str
    already_published: bool
    current_moved: bool
    current: str | None
    deleted: tuple[str, ...] = ()  # what retention removed (``keep_versions`` given)


def _no_fault(step: str) -> None:
    return None


def _write_version_dir(
    target: Path,
    vectors: ItemVectors,
    markets: dict,
    manifest: dict,
    fault: FaultHook,
    cold_start: set[str] | None = None,
    extra_files: dict[str, str] | None = None,
    write_extra: Callable[[Path], object] | None = None,
) -> None:
    write_vectors(target / VECTORS_FILE, vectors, markets, cold_start)
    for name, text in (extra_files or {}).items():
        (target / name).write_text(text)
    if write_extra is not None:  # e.g. the ANN index, built from the written Parquet file
        write_extra(target)
    fault("data_written")
    files = {
        p.relative_to(target).as_posix(): file_sha256(p)
        for p in sorted(target.rglob("*"))
        if p.is_file() and is_listed_kind(PurePosixPath(p.relative_to(target)))
    }
    full = {
        "contract_version": CONTRACT_VERSION,
        **manifest,
        "dim": vectors.dim,
        "n_items": len(vectors.ids),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    (target / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
    fsync_tree(target)  # every byte on disk before the rename makes the version visible
    fault("manifest_written")


def publish_version(
    root: Path,
    version: str,
    vectors: ItemVectors,
    markets: dict[str, str | None],
    manifest: dict,
    fault: FaultHook | None = None,
    cold_start: set[str] | None = None,
    extra_files: dict[str, str] | None = None,
    keep_versions: int | None = None,
    write_extra: Callable[[Path], object] | None = None,
) -> PublishResult:
    """Publish ``vectors`` (``cold_start``: the ids flagged ``is_cold_start``) and
    ``extra_files`` (name -> text, e.g. ``report.html``) as ``version`` under ``root``;
    ``write_extra(folder)`` may add binary files (the prebuilt ANN index) before the manifest
    checksums everything and the folder is renamed into place. Then
    move CURRENT forward (unless a rollback pin holds, see ``move_current``), then, when
    ``keep_versions`` is given, apply ``apply_version_retention`` (never to ``version``)."""
    fault = fault or _no_fault
    final = root / VERSIONS / version
    remove_stale_staging(root)
    already = is_published(root, version)
    if not already:
        if final.exists():  # a crash or power cut left it damaged: same inputs, so redo it
            logger.warning("%s exists but is not a complete version: replacing it", final)
            delete_folder(root, VERSIONS, version)
        tmp = root / TMP / f"{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            _write_version_dir(
                tmp,
                vectors,
                markets,
                {**manifest, "version": version},
                fault,
                cold_start,
                extra_files,
                write_extra,
            )
            fault("before_rename")
            final.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(root)  # the versions/ entry itself, the first time
            rename_durably(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("published %s (%d items)", final, len(vectors.ids))
    fault("after_rename")
    fault("before_current")
    moved = move_current(root, version)
    chaos.point("publish.retention")
    deleted = _retain_after_publish(root, keep_versions, version)
    return PublishResult(version, str(final), already, moved, current_or_none(root), deleted)


def finish_publish(root: Path, version: str, keep_versions: int | None = None) -> PublishResult:
    """A complete version exists: only make sure CURRENT has moved (idempotent; a rollback pin
    still holds), then apply retention when ``keep_versions`` is given."""
    verify_version(root / VERSIONS / version)
    moved = move_current(root, version)
    deleted = _retain_after_publish(root, keep_versions, version)
    return PublishResult(
        version, str(root / VERSIONS / version), True, moved, current_or_none(root), deleted
    )


def _retain_after_publish(root: Path, keep: int | None, version: str) -> tuple[str, ...]:
    """Retention after a successful publish: the publish stands even if cleaning fails."""
    if keep is None:
        return ()
    try:
        return tuple(apply_version_retention(root, keep, protect=(version,)))
    except (OSError, PublishError) as exc:
        logger.warning("version retention skipped after publishing %s: %s", version, exc)
        return ()


def remove_stale_staging(root: Path, older_than_s: float = STALE_STAGING_S) -> list[str]:
    """Remove the ``.tmp/<version>-<nonce>`` folders of publishes that crashed: those untouched
    for ``older_than_s`` (a younger one may belong to a publish still writing). Returns the
    names removed; each is logged."""
    scratch = root / TMP
    removed = []
    now = time.time()
    if held_here(root):  # this process is the only writer: every staging folder is dead
        older_than_s = 0.0
    for path in sorted(scratch.iterdir()) if scratch.is_dir() else []:
        if path.name.startswith(DELETING) or not path.is_dir():
            continue
        try:
            age_s = now - path.stat().st_mtime
        except OSError:
            continue  # removed meanwhile
        if age_s >= older_than_s:
            logger.warning(
                "removing %s, left %.0f s ago by a publish that did not finish", path, age_s
            )
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def reject_version(
    root: Path, version: str, manifest: dict, extra_files: dict[str, str] | None = None
) -> Path:
    """Record a candidate that failed the quality gate (its manifest, metrics and report)."""
    target = root / REJECTED / version
    target.mkdir(parents=True, exist_ok=True)
    for name, text in (extra_files or {}).items():
        _write_atomic(target / name, text)
    payload = {"contract_version": CONTRACT_VERSION, **manifest, "version": version}
    _write_atomic(target / MANIFEST, json.dumps(payload, indent=2, sort_keys=True, default=str))
    return target
