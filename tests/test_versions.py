"""One verdict on a published version: the publisher, the service, the serving refresh and
the CLI all read and verify versions through ``embedding.vectors.versions``, so each damaged
version below is refused by all four with the same message, and each intact one accepted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from embedding.cli import main
from embedding.core.config import ServingConfig
from embedding.vectors import publish
from embedding.vectors.item_vectors import ItemVectors, normalize_rows
from embedding.vectors.versions import VersionError, verify_version
from serving.model import VersionLoadError, load_version
from serving.refresh import RefreshError, check_published

VERSION = "20260105-aaaaaaaa"
CFG = ServingConfig()


def _published(root: Path) -> Path:
    rng = np.random.default_rng(0)
    vectors = ItemVectors(
        ids=[f"i{i:03d}" for i in range(40)],
        vectors=normalize_rows(rng.normal(size=(40, 8)).astype(np.float32)),
        counts=np.arange(40, dtype=np.int64),
    )
    publish.publish_version(
        root,
        VERSION,
        vectors,
        {},
        {"gate": {"passed": True}},
        extra_files={"report.html": "<html></html>"},
    )
    return root / "versions" / VERSION


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


DAMAGES = {
    "empty manifest": (
        lambda f: (f / "manifest.json").write_text(""),
        r"manifest.json: unreadable .*20260105-aaaaaaaa is incomplete or damaged",
    ),
    "manifest missing": (
        lambda f: (f / "manifest.json").unlink(),
        r"manifest.json: missing; version 20260105-aaaaaaaa",
    ),
    "not an object": (
        lambda f: (f / "manifest.json").write_text("[1, 2]"),
        r"manifest.json: not a JSON object",
    ),
    "no files": (
        lambda f: _edit_manifest(f, lambda m: {k: v for k, v in m.items() if k != "files"}),
        r"'files' does not list item_vectors.parquet",
    ),
    "files empty": (
        lambda f: _edit_manifest(f, lambda m: {**m, "files": {}}),
        r"'files' does not list item_vectors.parquet",
    ),
    "no checksum": (
        lambda f: _edit_manifest(f, lambda m: {**m, "files": {**m["files"], "report.html": None}}),
        r"holds no sha256 for 'report.html'",
    ),
    "unlisted file": (
        lambda f: (f / "stray.bin").write_bytes(b"x"),
        r"does not list stray.bin",
    ),
    "truncated vectors": (
        lambda f: (f / "item_vectors.parquet").write_bytes(b"PAR1"),
        r"item_vectors.parquet: sha256 .* does not match manifest.json",
    ),
    "listed file missing": (
        lambda f: (f / "report.html").unlink(),
        r"report.html: listed in manifest.json but missing",
    ),
    "another version's manifest": (
        lambda f: _edit_manifest(f, lambda m: {**m, "version": "20260101-bbbbbbbb"}),
        r"says version '20260101-bbbbbbbb' but lives in folder '20260105-aaaaaaaa'",
    ),
    "a path out of the folder": (
        lambda f: _edit_manifest(
            f, lambda m: {**m, "files": {**m["files"], "../../CURRENT": "0" * 64}}
        ),
        r"'../../CURRENT' lies outside the version folder",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_reader_refuses_a_damaged_version_with_the_same_message(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "publish"
    folder = _published(root)
    damage_fn, message = DAMAGES[damage]
    damage_fn(folder)

    with pytest.raises(VersionError, match=message) as by_publisher:
        verify_version(folder)
    assert not publish.is_published(root, VERSION)
    with pytest.raises(VersionLoadError, match=message) as by_service:
        load_version(root, VERSION, CFG)
    with pytest.raises(RefreshError, match=message):
        check_published(root)
    capsys.readouterr()
    code = main(["-q", "neighbors", "i001", "--publish-root", str(root), "--version", VERSION])
    stderr = capsys.readouterr().err

    assert str(by_service.value) == str(by_publisher.value)  # one verdict, word for word
    assert code == 1 and re.search(message, stderr), stderr


@pytest.mark.parametrize("form", ["bare hex", "sha256: prefix", "object, upper case"])
def test_every_reader_accepts_the_three_checksum_forms_and_the_publisher_writes_bare_hex(
    tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "publish"
    folder = _published(root)
    written = json.loads((folder / "manifest.json").read_text())["files"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in written.values())
    to_form = {
        "bare hex": lambda d: d,
        "sha256: prefix": lambda d: f"sha256:{d}",
        "object, upper case": lambda d: {"sha256": d.upper()},
    }[form]
    _edit_manifest(folder, lambda m: {**m, "files": {n: to_form(d) for n, d in written.items()}})

    assert verify_version(folder)["files"]["report.html"] == to_form(written["report.html"])
    assert load_version(root, VERSION, CFG).n_items == 40
    assert check_published(root)["version"] == VERSION
    capsys.readouterr()
    assert main(["neighbors", "i001", "--publish-root", str(root), "--version", VERSION]) == 0
    assert "i0" in capsys.readouterr().out
