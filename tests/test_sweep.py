"""The sweep: grid files checked with clear errors, trials expanded as written, every trial
ranked on the validation split over the real sessions of a pipeline run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from embedding.cli import main
from embedding.core.config import Word2VecParams, load_config
from embedding.core.errors import ConfigError
from embedding.sweep import SweepGrid, load_grid, trials


def write_grid(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_grid_expands_every_combination_after_the_included_trials() -> None:
    grid = SweepGrid(
        params={"epochs": [5, 20], "window": [2, 3, 5]},
        fixed={"workers": 1},
        include=[{"name": "text-defaults", "epochs": 5, "min_count": 5}],
    )
    out = trials(grid, Word2VecParams())
    assert len(out) == 1 + 6
    assert out[0][0] == "text-defaults" and out[0][1].min_count == 5
    assert {(p.epochs, p.window) for _, p in out[1:]} == {
        (e, w) for e in (5, 20) for w in (2, 3, 5)
    }
    assert all(p.workers == 1 for _, p in out)


def test_random_mode_draws_n_trials_reproducibly() -> None:
    grid = SweepGrid(mode="random", n_trials=4, seed=3,
                     params={"epochs": [5, 20, 50], "window": [2, 3, 5]})  # fmt: skip
    first = [name for name, _ in trials(grid, Word2VecParams())]
    assert len(first) == 4 and len(set(first)) == 4
    assert first == [name for name, _ in trials(grid, Word2VecParams())]


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"params": {"epoch": [5]}}, "'epoch' is not a word2vec knob"),
        ({"params": {"epochs": []}}, "params.epochs lists no value"),
        ({"params": {}}, "no trial"),
        ({"mode": "bayes", "params": {"epochs": [5]}}, "invalid sweep grid"),
        ({"include": [{"name": "x", "windw": 3}]}, "'windw' is not a word2vec knob"),
    ],
)
def test_bad_grid_files_are_named_with_the_problem(
    tmp_path: Path, tree: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as failure:
        load_grid(write_grid(tmp_path, tree))
    assert "grid.yaml" in str(failure.value)


def test_a_bad_value_names_the_trial(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path, {"params": {"epochs": [5, -1]}}))
    with pytest.raises(ConfigError, match="sweep trial 'epochs=-1'"):
        trials(grid, Word2VecParams())


def test_cli_refuses_a_missing_grid_with_exit_2(tmp_path: Path, capsys) -> None:
    code = main(["sweep", "--grid", str(tmp_path / "none.yaml"), "--input", str(tmp_path)])
    assert code == 2
    assert "sweep grid not found" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_ranks_trials_on_validation_and_writes_the_best_config(
    generated_run: dict, tmp_path: Path
) -> None:
    from embedding.sweep import run_sweep

    cfg = generated_run["cfg"]
    plan = generated_run["result"].plan
    grid = SweepGrid(params={"epochs": [1, 8]}, fixed={"workers": 1, "vector_size": 16},
                     include=[{"name": "text-defaults", "epochs": 1, "min_count": 5}])  # fmt: skip
    ranked = run_sweep(cfg, plan, grid, tmp_path / "out")
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    values = [r["val"]["hr@10"] for r in ranked]
    assert values == sorted(values, reverse=True)
    assert all("test" not in r for r in ranked)  # the test split is not touched by default
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert saved["n_val_cases"] > 0 and saved["n_test_cases"] is None
    assert "latest 10%" in saved["validation"]
    assert 0 < saved["popularity_val"]["hr@10"] < 1  # the reference, on the same cases
    csv_lines = (tmp_path / "out" / "sweep.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and "val_hr@10" in csv_lines[0]
    best = load_config(tmp_path / "out" / "best.yaml")
    for knob in ("epochs", "min_count", "vector_size", "window", "ns_exponent", "sample"):
        assert getattr(best.word2vec, knob) == ranked[0][knob], knob
    assert best.word2vec.vector_size == 16  # the fixed knobs reach every trial

    scored = run_sweep(cfg, plan, grid, tmp_path / "with-test", score_test=True)
    assert all(0.0 <= r["test"]["hr@10"] <= 1.0 for r in scored)
    assert [r["trial"] for r in scored] == [r["trial"] for r in ranked]  # workers=1: same

    seeded = grid.model_copy(update={"seeds": [cfg.seed, cfg.seed + 1], "include": []})
    averaged = run_sweep(cfg, plan, seeded, tmp_path / "seeds")
    for row in averaged:
        assert len(row["val_by_seed"]) == 2
        assert row["val"]["hr@10"] == pytest.approx(sum(row["val_by_seed"]) / 2)
    first_seed = {r["trial"]: r["val"]["hr@10"] for r in ranked}
    assert {r["trial"]: r["val_by_seed"][0] for r in averaged} == {
        t: v for t, v in first_seed.items() if t != "text-defaults"
    }
