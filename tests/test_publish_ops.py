"""Operations on a publish root (CONTRACTS §2): rollback and its pin, version retention, and
the `versions`, `rollback` and `neighbors --market` commands, over real files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedding.cli import main
from embedding.core.errors import InputError, PublishError
from embedding.vectors import publish, retention
from embedding.vectors.item_vectors import ItemVectors, normalize_rows
from embedding.vectors.parquet_io import VECTORS_FILE

GOOD = "20260105-aaaaaaaa"
BAD = "20260108-bbbbbbbb"


def _vectors(n: int = 12, dim: int = 4, seed: int = 0) -> ItemVectors:
    rng = np.random.default_rng(seed)
    return ItemVectors(
        ids=[f"i{i:03d}" for i in range(n)],
        vectors=normalize_rows(rng.normal(size=(n, dim)).astype(np.float32)),
        counts=np.arange(n, dtype=np.int64),
    )


def _gate(value: float, passed: bool = True) -> dict:
    return {
        "passed": passed,
        "metric": "hr@10",
        "value": value,
        "required": 0.05,
        "reason": f"finetuned hr@10 {value:.4f} {'>=' if passed else '<'} required 0.0500",
    }


def _publish(root: Path, version: str, seed: int = 0, **kwargs) -> publish.PublishResult:
    markets = kwargs.pop("markets", {})
    return publish.publish_version(
        root, version, _vectors(seed=seed), markets, {"gate": _gate(0.2)}, **kwargs
    )


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the writer lock (``embedding.core.lock``: it names its last
    holder, and a refused command took it)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _pin(root: Path) -> dict:
    return json.loads((root / publish.PINNED).read_text())


@pytest.fixture
def rolled_back(tmp_path: Path) -> Path:
    """GOOD then BAD published (CURRENT = BAD), then rolled back to GOOD."""
    _publish(tmp_path, GOOD, seed=1)
    _publish(tmp_path, BAD, seed=2)
    assert publish.current_or_none(tmp_path) == BAD
    result = publish.rollback(tmp_path, GOOD)
    assert (result.version, result.previous_current, result.newest_at_pin) == (GOOD, BAD, BAD)
    return tmp_path


def test_rollback_moves_current_back_and_writes_the_pin(rolled_back: Path) -> None:
    assert publish.current_or_none(rolled_back) == GOOD
    pin = _pin(rolled_back)
    assert pin["version"] == GOOD and pin["newest_at_pin"] == BAD
    assert pin["previous_current"] == BAD and pin["pinned_at"]
    assert publish.read_pin(rolled_back) == pin
    assert not list(rolled_back.glob(".*.tmp"))  # written by temp file + rename
    publish.verify_version(rolled_back / "versions" / BAD)  # nothing is deleted


def test_rerunning_the_rolled_back_version_keeps_current_while_pinned(
    rolled_back: Path,
) -> None:
    again = _publish(rolled_back, BAD, seed=2)  # a rerun finds it already published
    assert again.already_published and not again.current_moved and again.current == GOOD
    finished = publish.finish_publish(rolled_back, BAD)
    assert not finished.current_moved and finished.current == GOOD
    # a backfill or another build of the same day as the bad version does not lift the pin
    for version in ("20260108-cccccccc", "20260106-dddddddd", "20260101-eeeeeeee"):
        assert not _publish(rolled_back, version, seed=3).current_moved
    assert publish.current_or_none(rolled_back) == GOOD
    assert _pin(rolled_back)["version"] == GOOD


def test_a_later_day_publish_moves_current_forward_and_lifts_the_pin(rolled_back: Path) -> None:
    result = _publish(rolled_back, "20260109-ffffffff", seed=4)
    assert result.current_moved and result.current == "20260109-ffffffff"
    assert not (rolled_back / publish.PINNED).exists()
    # unpinned again: the ordinary forward-only rule
    assert not publish.finish_publish(rolled_back, BAD).current_moved
    assert publish.current_or_none(rolled_back) == "20260109-ffffffff"


def test_a_rerun_finishes_a_pin_lift_interrupted_after_current_moved(rolled_back: Path) -> None:
    pin = (rolled_back / publish.PINNED).read_text()
    _publish(rolled_back, "20260109-ffffffff", seed=4)
    (rolled_back / publish.PINNED).write_text(pin)  # as if the crash came before the unlink
    again = publish.finish_publish(rolled_back, "20260109-ffffffff")
    assert not again.current_moved and again.current == "20260109-ffffffff"
    assert not (rolled_back / publish.PINNED).exists()


def test_a_second_rollback_keeps_the_first_ones_bar(rolled_back: Path) -> None:
    _publish(rolled_back, "20260103-99999999", seed=5)
    second = publish.rollback(rolled_back, "20260103-99999999")
    assert second.previous_current == GOOD and second.newest_at_pin == BAD
    assert not publish.finish_publish(rolled_back, BAD).current_moved
    assert publish.current_or_none(rolled_back) == "20260103-99999999"


def test_the_gate_compares_with_the_pinned_version_not_the_rolled_back_one(
    rolled_back: Path,
) -> None:
    assert publish.previous_version(rolled_back, "20260109") == GOOD
    _publish(rolled_back, "20260109-ffffffff", seed=4)
    assert publish.previous_version(rolled_back, "20260110") == "20260109-ffffffff"
    assert publish.previous_version(rolled_back, "20260109") == BAD  # unpinned: by day again


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "20260101-00000000", "20260101-AAAAAAAA", ""])
def test_rollback_command_refuses_unknown_and_path_like_ids(
    rolled_back: Path, bad_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(rolled_back)
    assert main(["-q", "rollback", bad_id, "--publish-root", str(rolled_back)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and repr(bad_id)[1:-1] in err[0]
    assert _tree(rolled_back) == before


def test_rollback_refuses_a_rejected_or_incomplete_version(
    rolled_back: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish.reject_version(rolled_back, "20260107-12345678", {"gate": _gate(0.01, False)})
    with pytest.raises(InputError, match=r"20260107-12345678.*quality gate"):
        publish.rollback(rolled_back, "20260107-12345678")
    target = rolled_back / "versions" / BAD / VECTORS_FILE
    target.write_bytes(target.read_bytes() + b"x")
    before = _tree(rolled_back)
    with pytest.raises(PublishError, match=f"cannot roll back to {BAD}"):
        publish.rollback(rolled_back, BAD)
    assert main(["-q", "rollback", BAD, "--publish-root", str(rolled_back)]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot roll back to {BAD}")
    assert _tree(rolled_back) == before


def test_rollback_command_prints_what_current_was_and_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(tmp_path, GOOD, seed=1)
    _publish(tmp_path, BAD, seed=2)
    assert main(["-q", "rollback", GOOD, "--publish-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"CURRENT was {BAD}, now {GOOD}" in out and "2026-01-08" in out
    assert publish.current_or_none(tmp_path) == GOOD and _pin(tmp_path)["version"] == GOOD


def _days(n: int) -> list[str]:
    return [f"202601{d:02d}-{d:08x}" for d in range(1, n + 1)]


def test_retention_keeps_current_the_one_before_it_and_the_pinned_one(tmp_path: Path) -> None:
    versions = _days(6)
    for i, version in enumerate(versions):
        _publish(tmp_path, version, seed=i)
    publish.rollback(tmp_path, versions[2])  # CURRENT = day 3, pinned; day 2 comes before it
    for i in range(3):
        publish.reject_version(tmp_path, f"2026010{7 + i}-0000000{i}", {"gate": _gate(0, False)})
    deleted = publish.apply_version_retention(tmp_path, keep=2)
    assert deleted == [f"versions/{versions[3]}", f"versions/{versions[0]}",
                       "rejected/20260107-00000000"]  # fmt: skip
    assert publish.version_names(tmp_path) == [versions[1], versions[2], *versions[4:]]
    assert publish.version_names(tmp_path, publish.REJECTED) == [
        "20260108-00000001",
        "20260109-00000002",
    ]
    for version in publish.version_names(tmp_path):
        publish.verify_version(tmp_path / "versions" / version)
    assert not list(tmp_path.rglob(f"{publish.DELETING}*"))
    assert publish.current_or_none(tmp_path) == versions[2]
    assert publish.apply_version_retention(tmp_path, keep=2) == []  # idempotent


def test_retention_after_publish_spares_the_new_version_and_finishes_crashed_deletions(
    tmp_path: Path,
) -> None:
    versions = _days(4)
    for i, version in enumerate(versions[1:]):
        _publish(tmp_path, version, seed=i)
    leftover = tmp_path / publish.TMP / f"{publish.DELETING}versions-x-1234abcd"
    (leftover / "sub").mkdir(parents=True)
    backfill = _publish(tmp_path, versions[0], seed=9, keep_versions=2)  # the oldest day
    assert not backfill.current_moved and backfill.deleted == (f"versions/{versions[1]}",)
    assert publish.version_names(tmp_path) == [versions[0], *versions[2:]]
    assert not leftover.exists()
    assert publish.current_or_none(tmp_path) == versions[3]


def test_a_crash_while_deleting_never_leaves_a_half_deleted_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = _days(4)
    for i, version in enumerate(versions):
        _publish(tmp_path, version, seed=i)

    def crash(path: Path, *args, **kwargs) -> None:
        (Path(path) / VECTORS_FILE).unlink()  # half-way through
        raise OSError("disk gone")

    monkeypatch.setattr(publish.shutil, "rmtree", crash)
    with pytest.raises(OSError, match="disk gone"):
        publish.apply_version_retention(tmp_path, keep=2)
    monkeypatch.undo()
    # day 2 went first (newest beyond keep): out of versions/ at once, before any file went
    remaining = [versions[0], *versions[2:]]
    assert publish.version_names(tmp_path) == remaining
    for version in remaining:
        publish.verify_version(tmp_path / "versions" / version)
    assert len(list((tmp_path / publish.TMP).glob(f"{publish.DELETING}*"))) == 1
    assert publish.apply_version_retention(tmp_path, keep=2) == [f"versions/{versions[0]}"]
    assert not list(tmp_path.rglob(f"{publish.DELETING}*"))


def test_retention_failure_does_not_fail_the_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, version in enumerate(_days(3)):
        _publish(tmp_path, version, seed=i)

    def refuse(*args, **kwargs) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(retention, "delete_folder", refuse)
    result = publish.finish_publish(tmp_path, _days(3)[-1], keep_versions=2)
    assert result.deleted == () and result.current == _days(3)[-1]


def test_keep_versions_is_configured_and_does_not_change_version_ids() -> None:
    from embedding.core.config import load_config

    base = load_config(None)
    assert base.publish.keep_versions == 10
    assert load_config(None, ["publish.keep_versions=3"]).fingerprint() == base.fingerprint()
    from embedding.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"publish\.keep_versions"):
        load_config(None, ["publish.keep_versions=1"])


def test_versions_lists_current_pinned_and_rejected(
    rolled_back: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish.reject_version(rolled_back, "20260109-12345678", {"gate": _gate(0.0123, False)})
    (rolled_back / "versions" / "20260102-00000000").mkdir()  # incomplete
    assert main(["-q", "versions", "--publish-root", str(rolled_back)]) == 0
    lines = capsys.readouterr().out.splitlines()
    good = next(line for line in lines if GOOD in line)
    assert good.startswith("*P") and "2026-01-05" in good and "12 items" in good
    assert "hr@10 0.2000" in good and "passed" in good
    bad = next(line for line in lines if line.lstrip("*P ").startswith(BAD))
    assert bad.startswith("   ") and "published" in bad
    rejected = next(line for line in lines if "20260109-12345678" in line)
    assert "rejected" in rejected and "hr@10 0.0123" in rejected and "failed" in rejected
    assert "< required 0.0500" in rejected  # the gate's reason
    assert any("20260102-00000000" in line and "incomplete" in line for line in lines)
    assert any(line.startswith(f"pinned: CURRENT held at {GOOD}") for line in lines)


def test_neighbors_market_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    markets = {f"i{i:03d}": ("paris" if i % 3 == 0 else "rome") for i in range(12)}
    markets["i011"] = "oslo"
    _publish(tmp_path, GOOD, markets=markets)
    root = ["--publish-root", str(tmp_path)]
    assert main(["-q", "neighbors", "i000", "--market", "paris", "--k", "10", *root]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = out[1:]
    assert len(rows) == 3 and all("paris" in row for row in rows)  # i003, i006, i009
    assert "i000 " not in " ".join(rows)
    scores = [float(row.split()[-1]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert main(["-q", "neighbors", "i000", "--market", "rome", "--k", "2", *root]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 2 and all("rome" in row for row in rows)
    assert main(["-q", "neighbors", "i011", "--market", "oslo", *root]) == 0
    assert "no other item in market 'oslo'" in capsys.readouterr().out
    assert main(["-q", "neighbors", "i000", "--market", "berlin", *root]) == 2
    assert "no item of market 'berlin'" in capsys.readouterr().err
    assert main(["-q", "neighbors", "i000", "--version", "../x", *root]) == 2
    assert "not a version id" in capsys.readouterr().err
