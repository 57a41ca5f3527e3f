"""Sweep of the skip-gram knobs, ranked on the validation split.

``python -m embedding sweep --grid conf/sweep.yaml --input LOG`` sessionizes the log, splits
the window three ways exactly as a run does (``embedding.core.workdir.split_sessions``), trains one
skip-gram per trial on the same streamed training sessions and scores each on the validation
sessions' next-item cases (HR@10, HR@20, MRR@20, NDCG@10; cases whose items have no vector
count as misses). The test split is never used to rank; ``--score-test`` adds its figures as
extra columns for the record. Output folder: ``sweep.json`` (rewritten after every trial, so an
interrupted sweep keeps what it measured), ``sweep.csv`` and ``best.yaml`` (the config with the
best trial's knobs).

Grid file::

    mode: grid            # grid: every combination; random: n_trials draws (seeded)
    n_trials: 20
    seed: 0               # of the random draw
    seeds: [1, 2, 3]      # train each trial with each seed and average (default: the conf seed)
    metric: hr@10         # validation metric that ranks the trials
    fixed: {workers: 2}   # applied to every trial
    params:               # word2vec knob -> values to try
      ns_exponent: [-0.5, 0.0, 0.75]
      epochs: [5, 20, 50]
    include:              # extra named trials, e.g. word2vec's text defaults
      - {name: text-defaults, epochs: 5, min_count: 5, ns_exponent: 0.75, sample: 0.001}
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedding.core.config import Config, Word2VecParams
from embedding.core.errors import ConfigError
from embedding.quality.evaluate import (
    MISS,
    embedding_ranks,
    next_item_cases,
    popularity_ranks,
    ranking_metrics,
    sample_cases,
)

logger = logging.getLogger(__name__)

METRICS = ("hr@10", "hr@20", "mrr@20", "ndcg@10")


class SweepGrid(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["grid", "random"] = "grid"
    n_trials: int = Field(20, ge=1)  # random mode only
    seed: int = 0  # of the random draw
    seeds: list[int] | None = None  # training seeds per trial, figures averaged; None: conf seed
    metric: Literal["hr@10", "hr@20", "mrr@20", "ndcg@10"] = "hr@10"
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, list[Any]] = Field(default_factory=dict)
    include: list[dict[str, Any]] = Field(default_factory=list)


def load_grid(path: Path) -> SweepGrid:
    if not path.is_file():
        raise ConfigError(f"{path}: sweep grid not found")
    try:
        grid = SweepGrid.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: invalid sweep grid: {' '.join(str(exc).split())}") from exc
    knobs = set(Word2VecParams.model_fields)
    for key in [*grid.fixed, *grid.params, *(k for t in grid.include for k in t if k != "name")]:
        if key not in knobs:
            raise ConfigError(
                f"{path}: '{key}' is not a word2vec knob ({', '.join(sorted(knobs))})"
            )
    for key, values in grid.params.items():
        if not values:
            raise ConfigError(f"{path}: params.{key} lists no value")
    if not grid.params and not grid.include:
        raise ConfigError(f"{path}: no trial: give params and/or include")
    return grid


def trials(grid: SweepGrid, base: Word2VecParams) -> list[tuple[str, Word2VecParams]]:
    """(name, params) per trial: the included ones first, then the grid or random draws."""
    keys = list(grid.params)
    combos = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.params.values())
    ]
    if grid.mode == "random" and len(combos) > grid.n_trials:
        combos = random.Random(grid.seed).sample(combos, grid.n_trials)
    named = [(t.get("name", f"include-{i}"), {k: v for k, v in t.items() if k != "name"})
             for i, t in enumerate(grid.include)]  # fmt: skip
    named += [(" ".join(f"{k}={v}" for k, v in c.items()), c) for c in combos if keys]
    out = []
    for name, knobs in named:
        try:
            params = Word2VecParams.model_validate({**base.model_dump(), **grid.fixed, **knobs})
        except ValidationError as exc:
            raise ConfigError(f"sweep trial '{name}': {' '.join(str(exc).split())}") from exc
        out.append((name, params))
    return out


def _mean(runs: list[dict]) -> dict:
    """Figures averaged over the seeds of one trial."""
    return {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}


def _scores(vectors, cases: list[tuple[str, str]], batch_size: int) -> dict:
    """The next-item metrics (uncovered cases are misses) and the covered share."""
    ranks = embedding_ranks(vectors, cases, batch_size)
    metrics = ranking_metrics(ranks)
    return {**{m: metrics[m] for m in METRICS}, "coverage": float((ranks != MISS).mean())}


def run_sweep(
    cfg: Config, plan, grid: SweepGrid, out_dir: Path, score_test: bool = False
) -> list[dict]:
    """Train and score every trial; returns the rows ranked by the validation metric."""
    from embedding.stages.inputs import load_window, training_corpus
    from embedding.train.w2v import train_word2vec

    data = load_window(cfg, plan)
    corpus = training_corpus(cfg, plan)
    ev = cfg.evaluate
    val_cases = sample_cases(next_item_cases(data.val_sessions.column("item_ids").to_pylist()),
                             ev.max_cases, cfg.seed)  # fmt: skip
    if not val_cases:
        raise ConfigError(
            f"no validation cases ({data.validation}): raise evaluate.val_fraction to sweep"
        )
    test_cases = []
    if score_test:
        test_cases = sample_cases(
            next_item_cases(data.test_sessions.column("item_ids").to_pylist()),
            ev.max_cases,
            cfg.seed,
        )
    train_counts = Counter(i for items in data.train_sessions.column("item_ids").to_pylist()
                           for i in items)  # fmt: skip
    popularity = ranking_metrics(popularity_ranks(train_counts, val_cases))
    header = {
        "grid": grid.model_dump(),
        "metric": grid.metric,
        "validation": data.validation,
        "holdout": data.holdout,
        "n_val_cases": len(val_cases),
        "n_test_cases": len(test_cases) if score_test else None,
        "data_interval": [plan.interval_start, plan.interval_end],
        "popularity_val": {m: popularity[m] for m in METRICS},
    }
    todo = trials(grid, cfg.word2vec)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.monotonic()
    for n, (name, params) in enumerate(todo, 1):
        corpus.oversample = params.booked_oversample
        runs, test_runs, train_s = [], [], []
        for seed in grid.seeds or [cfg.seed]:
            t0 = time.monotonic()
            vectors = train_word2vec(corpus, params, seed)
            train_s.append(time.monotonic() - t0)
            runs.append(_scores(vectors, val_cases, ev.batch_size))
            if score_test:
                test_runs.append(_scores(vectors, test_cases, ev.batch_size))
        row = {
            "trial": name,
            **{k: getattr(params, k) for k in ("vector_size", "window", "negative",
                                               "ns_exponent", "sample", "epochs", "min_count",
                                               "alpha", "booked_oversample", "sg")},
            "n_items": len(vectors.ids),
            "train_s": round(float(np.mean(train_s)), 2),
            "val": _mean(runs),
        }  # fmt: skip
        if len(runs) > 1:
            row["val_by_seed"] = [r[grid.metric] for r in runs]
        if score_test:
            row["test"] = _mean(test_runs)
        rows.append(row)
        elapsed = time.monotonic() - started
        logger.info(
            "sweep trial %d/%d [%s]: val %s %.4f (popularity %.4f), %d items, trained in %.1f s; "
            "ETA %.0f s",
            n, len(todo), name, grid.metric, row["val"][grid.metric], popularity[grid.metric],
            row["n_items"], row["train_s"], elapsed / n * (len(todo) - n),
        )  # fmt: skip
        _write(out_dir, header, rank_rows(rows, grid.metric), cfg)
    ranked = rank_rows(rows, grid.metric)
    _write(out_dir, header, ranked, cfg)
    return ranked


def rank_rows(rows: list[dict], metric: str) -> list[dict]:
    ranked = sorted(rows, key=lambda r: (-r["val"][metric], r["train_s"]))
    return [{"rank": i, **{k: v for k, v in r.items() if k != "rank"}}
            for i, r in enumerate(ranked, 1)]  # fmt: skip


def _write(out_dir: Path, header: dict, ranked: list[dict], cfg: Config) -> None:
    (out_dir / "sweep.json").write_text(json.dumps({**header, "trials": ranked}, indent=1))
    flat = [
        {**{k: v for k, v in r.items() if k not in ("val", "test")},
         **{f"val_{m}": v for m, v in r["val"].items()},
         **({"val_by_seed": " ".join(f"{v:.4f}" for v in r["val_by_seed"])}
            if "val_by_seed" in r else {}),
         **{f"test_{m}": v for m, v in r.get("test", {}).items()}}
        for r in ranked
    ]  # fmt: skip
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    best = ranked[0]
    tree = cfg.model_dump(mode="json", exclude={"paths"})
    tree["word2vec"].update({k: best[k] for k in tree["word2vec"] if k in best})
    (out_dir / "best.yaml").write_text(
        f"# best trial of the sweep in {out_dir}: {best['trial']}\n"
        f"# validation {header['metric']} {best['val'][header['metric']]:.4f} "
        f"({header['validation']})\n" + yaml.safe_dump(tree, sort_keys=False)
    )


KNOB_COLUMNS = (
    ("ns_exponent", "ns_exp", 6),
    ("window", "win", 3),
    ("sample", "sample", 7),
    ("epochs", "epochs", 6),
    ("vector_size", "dim", 4),
    ("min_count", "min_c", 5),
)


def format_table(ranked: list[dict], metric: str, popularity: dict | None = None) -> list[str]:
    """The ranked trials, one line each: knobs, vocabulary, training time, figures."""
    has_test = any("test" in r for r in ranked)
    head = f"{'#':>3} {'trial':<16}" + "".join(f" {label:>{w}}" for _, label, w in KNOB_COLUMNS)
    head += f" {'items':>6} {'train s':>8} {'val ' + metric:>10} {'val mrr@20':>10}"
    head += f" {'test ' + metric:>11}" if has_test else ""
    lines = [head, "-" * len(head)]
    for r in ranked:
        name = r["trial"] if not r["trial"].startswith(KNOB_COLUMNS[0][0]) else "grid"
        line = f"{r['rank']:>3} {name[:16]:<16}"
        line += "".join(
            f" {r[key]:>{w}g}" if r[key] is not None else f" {'auto':>{w}}"
            for key, _, w in KNOB_COLUMNS
        )
        line += f" {r['n_items']:>6} {r['train_s']:>8.1f} {r['val'][metric]:>10.4f}"
        line += f" {r['val']['mrr@20']:>10.4f}"
        line += f" {r['test'][metric]:>11.4f}" if has_test else ""
        lines.append(line)
    if popularity:
        lines.append(f"popularity on the same validation cases: {metric} {popularity[metric]:.4f}")
    return lines
