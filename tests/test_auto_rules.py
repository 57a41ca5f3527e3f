"""The rules that let a run work on any log with no config: corpus-derived skip-gram knobs,
outlier days, optional columns, the gate's bootstrap bound and the frozen evaluator's ranks."""

from __future__ import annotations

import numpy as np
import pytest

from bench.frozen_eval import expected_ranks
from embedding.core.config import GateConfig, SourceConfig, Word2VecParams
from embedding.core.errors import InputError
from embedding.quality.evaluate import bootstrap_lift
from embedding.quality.gate import check_gate
from embedding.train.auto_params import derived_dim, derived_epochs, derived_sample, resolve
from jobs.days import outlier_days
from jobs.ingest import resolve_columns


def test_sample_keeps_a_fixed_threshold_count_within_bounds() -> None:
    assert derived_sample(10_000) == pytest.approx(5e-4)  # "seen 5 times", not 0.3 times
    assert derived_sample(1_000) == 1e-3  # capped
    assert derived_sample(10_000_000) == 1e-4  # floor from the real logs


def test_epochs_spend_a_token_budget_and_dim_grows_with_items() -> None:
    assert derived_epochs(10_000) == 100
    assert derived_epochs(800_000) == 10
    assert derived_epochs(200_000) == 40
    assert [derived_dim(n) for n in (500, 20_000, 20_001, 300_000)] == [32, 32, 64, 128]


def test_only_unset_knobs_are_derived_and_recorded() -> None:
    params, record = resolve(Word2VecParams(epochs=7), n_tokens=50_000, n_items=3_000)
    assert params.epochs == 7 and record["derived"] == ["sample", "vector_size"]
    assert params.sample == pytest.approx(1e-4) and params.vector_size == 32
    assert record["n_tokens"] == 50_000


def test_days_far_from_the_bulk_are_outliers() -> None:
    counts = (94_000, 303_000, 261_000, 215_000, 27_000)
    bulk = {f"2017-10-0{d}": n for d, n in zip(range(1, 6), counts, strict=True)}
    tail = {"2017-10-06": 40, "2017-10-07": 30, "2017-10-08": 25, "2017-10-27": 3}
    assert outlier_days({**bulk, **tail}) == ["2017-10-08", "2017-10-27"]  # >2 days from bulk
    # a handful of rows years later, on a small log
    small = {"2014-04-01": 1500, "2014-04-02": 1400, "2017-04-01": 3, "2017-04-02": 2}
    assert outlier_days(small) == ["2017-04-01", "2017-04-02"]
    # a quiet day next to the others is kept; so is a log of one day
    assert outlier_days({"2026-01-01": 1000, "2026-01-02": 5, "2026-01-03": 900}) == []
    assert outlier_days({"2026-01-01": 10}) == []


def test_optional_columns_left_at_their_names_are_unused_when_absent() -> None:
    source, unused = resolve_columns(SourceConfig(), ["session_id", "item_id", "ts"])
    assert unused == ("user_id", "event", "market")
    assert source.columns.user_id is None and source.columns.session_id == "session_id"
    renamed = SourceConfig.model_validate({"columns": {"market": "city"}})
    source, unused = resolve_columns(renamed, ["user_id", "item_id", "ts"])
    assert source.columns.market == "city"  # a renamed mapping must exist: checked later
    with pytest.raises(InputError, match="neither a user_id nor a session_id"):
        resolve_columns(SourceConfig(), ["item_id", "ts"])


def test_gate_needs_a_confident_lift_over_popularity() -> None:
    gate = GateConfig(bootstrap_resamples=400)
    sessions = np.repeat(np.arange(200), 3)
    rng = np.random.default_rng(0)
    popularity = (rng.random(600) < 0.10).astype(float)
    strong = (rng.random(600) < 0.30).astype(float)
    noise = popularity.copy()
    noise[:2] = 1 - noise[:2]  # a hair above or below popularity, by chance
    metrics = {"popularity": {"hr@10": popularity.mean()}, "n_cases": 600,
               "cand": {"hr@10": strong.mean()}, "lift_ci": {}}  # fmt: skip
    metrics["lift_ci"]["cand"] = bootstrap_lift(strong, popularity, sessions, gate, seed=1)
    assert metrics["lift_ci"]["cand"]["lower"] > 0
    assert check_gate(metrics, "cand", gate).passed
    metrics["cand"]["hr@10"] = noise.mean() + 1e-9
    metrics["lift_ci"]["cand"] = bootstrap_lift(noise, popularity, sessions, gate, seed=1)
    verdict = check_gate(metrics, "cand", gate)
    assert not verdict.passed and "not > 0" in verdict.reason


def test_ties_count_at_their_expected_rank_and_the_query_is_left_out() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]])
    # target column 2 ties with columns 1 and 3: expected rank 1 + 1 = 2 (0-based)
    assert expected_ranks(scores.copy(), np.array([2]), np.array([-1]))[0] == 2.0
    # leaving the query (column 0) out moves it up by one
    assert expected_ranks(scores.copy(), np.array([2]), np.array([0]))[0] == 1.0
    missing = np.array([[0.3, -np.inf]])
    assert np.isinf(expected_ranks(missing, np.array([1]), np.array([-1]))[0])
