"""The completeness check: a partial or missing day fails before training, with its figures."""

import json
import logging
from datetime import date
from pathlib import Path

import pytest

from embedding.core.config import CompletenessConfig
from embedding.core.workdir import day_marker_path
from embedding.quality.completeness import IncompleteDataError, check_interval, judge_day

CFG = CompletenessConfig()


def write_markers(work: Path, volumes: dict[str, int | None]) -> None:
    for day, n in volumes.items():
        path = day_marker_path(work, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = {"day": day, "n_sessions": 10}
        if n is not None:
            marker["n_events"] = n
        path.write_text(json.dumps(marker))


def history(n_days: int, volume: int = 1000, start: int = 1) -> dict[str, int]:
    return {f"2026-01-{d:02d}": volume + 10 * d for d in range(start, start + n_days)}


def test_a_normal_day_passes_with_its_ratio(tmp_path: Path) -> None:
    write_markers(tmp_path, {**history(7), "2026-01-08": 1050})

    verdict = check_interval(CFG, tmp_path, date(2026, 1, 8), date(2026, 1, 9))

    (day,) = verdict.days
    assert day.status == "ok" and day.reference == 1040 and day.history_days == 7
    assert "1.01 x the median 1,040" in day.detail
    verdict.raise_for_failure()


def test_a_partial_day_fails_naming_day_and_figures(tmp_path: Path) -> None:
    write_markers(tmp_path, {**history(7), "2026-01-08": 300})

    verdict = check_interval(CFG, tmp_path, date(2026, 1, 8), date(2026, 1, 9))

    with pytest.raises(IncompleteDataError, match=r"2026-01-08: 300 events = 0.29 x") as info:
        verdict.raise_for_failure()
    assert "partial" in str(info.value) and not verdict.to_dict()["ok"]


@pytest.mark.parametrize(("volume", "what"), [(None, "no sessionized data"), (0, "0 valid")])
def test_a_missing_day_fails(tmp_path: Path, volume: int | None, what: str) -> None:
    write_markers(tmp_path, history(7))
    if volume is not None:
        write_markers(tmp_path, {"2026-01-08": volume})

    verdict = check_interval(CFG, tmp_path, date(2026, 1, 8), date(2026, 1, 9))

    assert verdict.days[0].status == "missing"
    with pytest.raises(IncompleteDataError, match=f"2026-01-08 .*{what}"):
        verdict.raise_for_failure()


def test_with_little_history_the_check_is_skipped_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_markers(tmp_path, {**history(2), "2026-01-03": 10})  # tiny, but nothing to compare

    with caplog.at_level(logging.INFO, logger="embedding.quality.completeness"):
        verdict = check_interval(CFG, tmp_path, date(2026, 1, 3), date(2026, 1, 4))

    assert verdict.days[0].status == "skipped"
    verdict.raise_for_failure()
    assert "check skipped, only 2 earlier days with counts (needs 3)" in caplog.text


def test_markers_without_counts_do_not_count_as_history(tmp_path: Path) -> None:
    write_markers(tmp_path, {f"2026-01-0{d}": None for d in range(1, 8)})  # older markers
    write_markers(tmp_path, {"2026-01-08": 5})

    assert check_interval(CFG, tmp_path, date(2026, 1, 8), date(2026, 1, 9)).days[0].status == (
        "skipped"
    )


def test_a_very_large_day_only_warns() -> None:
    verdict = judge_day("2026-01-08", 5000, [1000, 1000, 1000], CFG)
    assert verdict.status == "high" and "above max_ratio" in verdict.detail


def test_every_day_of_a_longer_interval_is_judged_against_its_own_trailing_days(
    tmp_path: Path,
) -> None:
    write_markers(tmp_path, {**history(5), "2026-01-06": 1100, "2026-01-07": 100})

    verdict = check_interval(CFG, tmp_path, date(2026, 1, 6), date(2026, 1, 8))

    assert [d.status for d in verdict.days] == ["ok", "partial"]
    assert verdict.days[1].history_days == 6  # 2026-01-06 is history for 2026-01-07


def test_disabled_check_judges_nothing(tmp_path: Path) -> None:
    cfg = CompletenessConfig(enabled=False)
    assert check_interval(cfg, tmp_path, date(2026, 1, 8), date(2026, 1, 9)).days == []
