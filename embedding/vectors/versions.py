"""Read and verify published versions: the one implementation every reader uses.

Input: a publish root (CONTRACTS.md §2): ``CURRENT`` naming a version, ``versions/<version>/``
holding ``manifest.json`` and the files it lists. The publisher (``embedding.vectors.publish``), the
service (``serving.model``), the serving refresh (``serving.refresh``) and the CLI all read
through here, so a damaged version gets the same verdict from each of them.

A version verifies when its manifest is a JSON object whose ``version`` (when present) is its
folder's name and whose ``files`` lists the vectors and every other file of the folder (hidden
and ``_``-marker files aside) with a sha256 each, and every listed file exists with that sha256.
Checksums are accepted in three forms (``<hex>``, ``sha256:<hex>``, ``{"sha256": <hex>}``); the
publisher writes bare hex.

    version = read_current(root)  # NoCurrentVersionError before the first publish
    manifest = verify_version(root / VERSIONS / version)  # VersionError when damaged
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from embedding.core.checksum import expected_sha256, file_sha256
from embedding.core.errors import PublishError
from embedding.vectors.parquet_io import VECTORS_FILE

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
# what the publisher's version_id produces; ids from a user (CLI, request) must match it in full
VERSION_ID = re.compile(r"[0-9]{8}-[0-9a-f]{8}")
# what may be read as a version folder: a plain name, never hidden or a path
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class VersionError(PublishError):
    """A published version is missing, incomplete or fails its checks."""

    exit_code = 1


class NoCurrentVersionError(VersionError):
    """The publish root has no ``CURRENT`` yet: nothing has passed the quality gate."""


def is_folder_name(name: str) -> bool:
    """A plain, visible folder name (no separator, not ``.``/``..``, not hidden)."""
    return isinstance(name, str) and bool(_FOLDER_NAME.fullmatch(name))


def version_day(version: str) -> str:
    return version.split("-", 1)[0]


def version_names(root: Path, kind: str = VERSIONS) -> list[str]:
    """Names of the folders under ``<root>/<kind>`` that may be versions, oldest first (by
    day, then name); hidden and temporary folders are never listed."""
    folder = root / kind
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and is_folder_name(p.name)]
    return sorted(names, key=lambda name: (version_day(name), name))


def read_current(root: Path) -> str:
    """The version named by ``<root>/CURRENT``.

    Raises:
        NoCurrentVersionError: CURRENT does not exist (or is empty) yet.
        VersionError: the publish root is missing, or CURRENT holds no version folder name.
    """
    root = Path(root)
    if not root.is_dir():
        raise VersionError(
            f"publish root {root} does not exist; pass the folder the pipeline publishes to"
        )
    path = root / CURRENT
    text = path.read_text().strip() if path.is_file() else ""
    if not text:
        raise NoCurrentVersionError(
            f"{path} does not exist: no version has been published to {root} yet"
        )
    if not is_folder_name(text):
        raise VersionError(f"{path}: {text!r} is not a version id (e.g. 20260108-1a2b3c4d)")
    return text


def current_or_none(root: Path) -> str | None:
    """CURRENT's version, or None before the first publish (a missing root included)."""
    path = Path(root) / CURRENT
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def version_folder(root: Path, version: str) -> Path:
    """``<root>/versions/<version>`` for a plain folder name; VersionError for a path."""
    if not is_folder_name(version):
        raise VersionError(f"{version!r} is not a version id (expected e.g. 20260108-1a2b3c4d)")
    return Path(root) / VERSIONS / version


def _redo(version_dir: Path) -> str:
    return (
        f"version {version_dir.name} is incomplete or damaged: rerun the run that produced "
        "it (the publish replaces the folder) or roll back to another version"
    )


def read_manifest(version_dir: Path) -> dict:
    """A version's manifest, checked for shape (not yet against the files).

    Raises:
        VersionError: naming the version and what to do: the folder or manifest is missing,
            empty, unparsable or not an object (e.g. a power cut before it reached the disk);
            it names another version; its ``files`` does not list the vectors with a sha256
            for each entry.
    """
    path = version_dir / MANIFEST
    if not version_dir.is_dir():
        raise VersionError(
            f"version {version_dir.name} not found: {version_dir} does not exist; check "
            f"{version_dir.parent.parent / CURRENT} or the version you asked for"
        )
    if not path.is_file():
        raise VersionError(f"{path}: missing; {_redo(version_dir)}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VersionError(f"{path}: unreadable ({exc}); {_redo(version_dir)}") from exc
    if not isinstance(manifest, dict):
        raise VersionError(f"{path}: not a JSON object; {_redo(version_dir)}")
    if manifest.get("version", version_dir.name) != version_dir.name:
        raise VersionError(
            f"{path}: says version {manifest['version']!r} but lives in folder {version_dir.name!r}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not any(
        name == VECTORS_FILE or name.startswith(f"{VECTORS_FILE}/") for name in files
    ):
        raise VersionError(f"{path}: 'files' does not list {VECTORS_FILE}; {_redo(version_dir)}")
    for name, entry in files.items():
        if expected_sha256(entry) is None:
            raise VersionError(
                f"{path}: 'files' holds no sha256 for {name!r}; {_redo(version_dir)}"
            )
    return manifest


def member_path(version_dir: Path, name: object) -> Path:
    """``version_dir / name`` for a file name read from a manifest, which must stay inside the
    version folder: no absolute path, no '..', no link leading out."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise VersionError(f"{version_dir / MANIFEST}: {name!r} is not a file name")
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise VersionError(
            f"{version_dir / MANIFEST}: {name!r} lies outside the version folder; refused"
        )
    path = version_dir / relative
    if not path.resolve().is_relative_to(version_dir.resolve()):
        raise VersionError(f"{version_dir / MANIFEST}: {name!r} leads out of the version folder")
    return path


def is_listed_kind(relative: PurePosixPath) -> bool:
    """Files a manifest must list: all but the manifest and hidden or marker files
    (``.x.tmp`` of a writer, Spark's ``_SUCCESS`` and ``.crc``)."""
    return relative.as_posix() != MANIFEST and not any(
        part.startswith((".", "_")) for part in relative.parts
    )


def verify_file(path: Path, entry: object, version_dir: Path) -> None:
    """``path`` exists and its sha256 is the one of its manifest ``files`` entry."""
    expected = expected_sha256(entry)
    name = path.relative_to(version_dir).as_posix()
    if expected is None:
        raise VersionError(f"{version_dir / MANIFEST}: 'files' holds no sha256 for {name!r}")
    if not path.is_file():
        raise VersionError(f"{path}: listed in {MANIFEST} but missing; {_redo(version_dir)}")
    actual = file_sha256(path)
    if actual != expected:
        raise VersionError(
            f"{path}: sha256 {actual[:12]}… does not match {MANIFEST} ({expected[:12]}…): the "
            f"file was changed or truncated after publishing; {_redo(version_dir)}"
        )


def verify_version(version_dir: Path) -> dict:
    """The manifest of a version that verifies (module docstring), else VersionError naming
    the version, the file and what to do."""
    manifest = read_manifest(version_dir)
    files = manifest["files"]
    for name, entry in files.items():
        verify_file(member_path(version_dir, name), entry, version_dir)
    present = {
        path.relative_to(version_dir).as_posix()
        for path in version_dir.rglob("*")
        if path.is_file() and is_listed_kind(PurePosixPath(path.relative_to(version_dir)))
    }
    if unlisted := sorted(present - set(files)):
        raise VersionError(
            f"{version_dir / MANIFEST}: does not list {', '.join(unlisted)}; every file of a "
            f"version is listed with its checksum; {_redo(version_dir)}"
        )
    return manifest
