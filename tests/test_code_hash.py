"""The code hash in version ids and day markers covers the code that can change published
output (CONTRACTS §2), found from the stages' imports: editing a developer tool or a CLI
message leaves it unchanged, editing training or sessionizing code changes it."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from embedding import PROJECT_ROOT
from embedding.core.checksum import OUTPUT_ROOTS, SESSIONIZE_ROOTS, output_modules, source_hash
from embedding.vectors.publish import version_id


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the project's packages, to edit."""
    for package in ("embedding", "jobs"):
        shutil.copytree(
            PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


def _edit(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text, f"{old!r} not in {file}"
    file.write_text(text.replace(old, new, 1))


def _ids(tree: Path) -> tuple[str, str]:
    """(a version id, a day marker's code hash) as computed from ``tree``."""
    code = source_hash(OUTPUT_ROOTS, tree)
    version = version_id(date(2026, 1, 8), "cfg", code, ["2026-01-08=abc"])
    return version, source_hash(SESSIONIZE_ROOTS, tree)


EDITS_KEEPING_IDS = {
    "a CLI message": (
        "embedding/commands/versions.py",
        "no CURRENT version; publish one first",
        "nothing yet",
    ),
    "the local Airflow launcher": ("embedding/devtools/airflow_local.py", '"""', '"""Edited. '),
    "the log generator": ("embedding/devtools/generate.py", '"""', '"""Edited. '),
    "the neighbours service": ("serving/model.py", '"""', '"""Edited. '),
    "a kill point": ("embedding/core/chaos.py", '"""', '"""Edited. '),
}
EDITS_CHANGING_IDS = {
    "training code": ("embedding/train/w2v.py", '"""', '"""Edited. '),
    "the fine-tune": ("embedding/train/finetune.py", '"""', '"""Edited. '),
    "sessionizing code": ("jobs/sessionize.py", '"""', '"""Edited. '),
}


@pytest.mark.parametrize("edit", sorted(EDITS_KEEPING_IDS))
def test_editing_a_tool_or_a_cli_message_leaves_version_ids_unchanged(
    tree: Path, edit: str
) -> None:
    path, old, new = EDITS_KEEPING_IDS[edit]
    before = _ids(tree)
    if path.startswith("serving/"):  # outside the packages hashed: copy it in to edit it
        shutil.copytree(PROJECT_ROOT / "serving", tree / "serving")
    _edit(tree / path, old, new)
    assert _ids(tree) == before


@pytest.mark.parametrize("edit", sorted(EDITS_CHANGING_IDS))
def test_editing_code_that_shapes_the_output_changes_version_ids(tree: Path, edit: str) -> None:
    path, old, new = EDITS_CHANGING_IDS[edit]
    version_before, marker_before = _ids(tree)
    _edit(tree / path, old, new)
    version_after, marker_after = _ids(tree)
    assert version_after != version_before
    # day markers cover sessionizing only: a training change rebuilds no day
    assert (marker_after != marker_before) == path.startswith("jobs/")


def test_a_module_a_stage_starts_importing_joins_the_hash(tree: Path) -> None:
    helper = tree / "embedding" / "train" / "new_helper.py"
    helper.write_text("FACTOR = 1\n")
    assert helper not in output_modules(OUTPUT_ROOTS, tree)
    before = source_hash(OUTPUT_ROOTS, tree)
    _edit(
        tree / "embedding" / "train" / "w2v.py",
        "\nimport ",
        "\nimport embedding.train.new_helper\nimport ",
    )
    assert helper in output_modules(OUTPUT_ROOTS, tree)
    assert source_hash(OUTPUT_ROOTS, tree) != before
