"""Publish: versioned item vectors with a manifest, appearing atomically (CONTRACTS §2).

Input: final ``ItemVectors`` and the manifest fields gathered by the run. Output:
``<root>/versions/<version>/`` (``item_vectors.parquet``, ``manifest.json`` with the checksum
of every data file), then ``<root>/CURRENT`` replaced by an atomic rename, only forward.

Order of operations, each step a point where a crash leaves readers safe:
write into ``<root>/.tmp/<version>-<nonce>`` -> manifest -> rename into ``versions/`` (the
version appears complete or not at all) -> replace ``CURRENT``. A rerun that finds the complete
version skips straight to moving ``CURRENT``, which finishes an interrupted publish. ``fault``
is a hook called with each step's name; tests make it raise to prove the guarantees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from embedding import PROJECT_ROOT
from embedding.checksum import file_sha256
from embedding.errors import PublishError
from embedding.train_w2v import ItemVectors
from embedding.vectors_io import VECTORS_FILE, write_vectors

logger = logging.getLogger(__name__)

CONTRACT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
REJECTED = "rejected"
TMP = ".tmp"
STEPS = ("data_written", "manifest_written", "before_rename", "after_rename", "before_current")
SOURCE_PACKAGES = ("embedding", "jobs")

FaultHook = Callable[[str], None]


def source_hash(packages: Iterable[str] = SOURCE_PACKAGES) -> str:
    """sha256 over the package's source files (path and bytes), so code changes new ids."""
    digest = hashlib.sha256()
    for package in packages:
        for file in sorted((PROJECT_ROOT / package).rglob("*.py")):
            digest.update(str(file.relative_to(PROJECT_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def version_id(last_day: date, config_hash: str, code_hash: str, input_hashes: list[str]) -> str:
    """``<YYYYMMDD of the last day trained on>-<8 hex>`` over config, code and inputs."""
    digest = hashlib.sha256()
    for part in (config_hash, code_hash, *input_hashes):
        digest.update(part.encode())
    return f"{last_day:%Y%m%d}-{digest.hexdigest()[:8]}"


def version_day(version: str) -> str:
    return version.split("-", 1)[0]


def read_current(root: Path) -> str | None:
    path = root / CURRENT
    if not path.is_file():
        return None
    text = path.read_text().strip()
    return text or None


def previous_version(root: Path, before_day: str) -> str | None:
    """The latest complete published version trained on days before ``before_day``
    (YYYYMMDD): the latest last day wins; among versions of that day, ``CURRENT``, else the
    last by name. None for the first version."""
    folder = root / VERSIONS
    days = {
        path.name: version_day(path.name)
        for path in (folder.iterdir() if folder.is_dir() else [])
        if version_day(path.name) < before_day and (path / MANIFEST).is_file()
    }
    if not days:
        return None
    latest = max(days.values())
    current = read_current(root)
    if current in days and days[current] == latest:
        return current
    return max(name for name, day in days.items() if day == latest)


def verify_version(version_dir: Path) -> dict:
    """Load a version's manifest and check every file's checksum; raise PublishError if not."""
    manifest_path = version_dir / MANIFEST
    if not manifest_path.is_file():
        raise PublishError(f"{version_dir}: no {MANIFEST}; the version is incomplete")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest.get("files", {}).items():
        path = version_dir / name
        if not path.is_file() or file_sha256(path) != expected:
            raise PublishError(f"{path}: missing or checksum differs from {MANIFEST}")
    return manifest


def is_published(root: Path, version: str) -> bool:
    try:
        verify_version(root / VERSIONS / version)
    except PublishError:
        return False
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def move_current(root: Path, version: str) -> bool:
    """Point CURRENT at ``version`` unless that would move it back to an older day."""
    current = read_current(root)
    if current == version:
        return False
    if current is not None and version_day(version) < version_day(current):
        logger.info("CURRENT stays at %s: %s is older", current, version)
        return False
    _write_atomic(root / CURRENT, version + "\n")
    logger.info("CURRENT -> %s (was %s)", version, current)
    return True


@dataclass(frozen=True)
class PublishResult:
    version: str
    path: str
    already_published: bool
    current_moved: bool
    current: str | None


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
) -> None:
    write_vectors(target / VECTORS_FILE, vectors, markets, cold_start)
    for name, text in (extra_files or {}).items():
        (target / name).write_text(text)
    fault("data_written")
    files = {
        p.name: file_sha256(p)
        for p in sorted(target.iterdir())
        if p.is_file() and p.name != MANIFEST
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
) -> PublishResult:
    """Publish ``vectors`` (``cold_start``: the ids flagged ``is_cold_start``) and
    ``extra_files`` (name -> text, e.g. ``report.html``) as ``version`` under ``root``, then
    move CURRENT forward."""
    fault = fault or _no_fault
    final = root / VERSIONS / version
    already = is_published(root, version)
    if not already:
        if final.exists():
            raise PublishError(
                f"{final}: exists but is not a complete version; move it aside and rerun"
            )
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
            )
            fault("before_rename")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("published %s (%d items)", final, len(vectors.ids))
    fault("after_rename")
    fault("before_current")
    moved = move_current(root, version)
    return PublishResult(version, str(final), already, moved, read_current(root))


def finish_publish(root: Path, version: str) -> PublishResult:
    """A complete version exists: only make sure CURRENT has moved (idempotent)."""
    verify_version(root / VERSIONS / version)
    moved = move_current(root, version)
    return PublishResult(version, str(root / VERSIONS / version), True, moved, read_current(root))


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
