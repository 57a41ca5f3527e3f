"""Helpers shared by the benchmarks: which commit and tree a figure was measured on."""

from __future__ import annotations

import subprocess

from embedding import PROJECT_ROOT


def _git(*args: str) -> str | None:
    """stdout of ``git <args>`` in the project, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    return _git("rev-parse", "--short", "HEAD") or "unknown"


def git_dirty() -> bool | None:
    """True when the working tree has changes against ``commit`` (None: not a git checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)
