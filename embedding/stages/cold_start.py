"""The cold-start stage: vectors for the item table's untrained items, from their most similar
trained items (Airbnb KDD'18), written to ``cold_start.parquet`` in the run folder, and how well
they work on items held out for it.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from embedding.core import chaos
from embedding.core.atomic import write_text_atomic
from embedding.core.config import Config
from embedding.stages.inputs import load_item_meta
from embedding.stages.plan import RunPlan, artefact
from embedding.stages.results import ColdStart, Evaluation
from embedding.stages.train import load_candidates
from embedding.vectors.item_vectors import ItemVectors
from embedding.vectors.parquet_io import write_vectors

logger = logging.getLogger(__name__)


COLD_START_FILE = "cold_start.parquet"


def cold_start_stage(cfg: Config, plan: RunPlan, evaluation: Evaluation) -> ColdStart:
    """Cold-start vectors for the item table's untrained items, inferred from the candidate the
    evaluation chose, and how well they work; nothing without an item table."""
    if plan.already_published:
        return ColdStart.from_dict(evaluation.metrics.get("cold_start") or {})
    meta = load_item_meta(plan)
    if meta is None or not cfg.cold_start.enabled:
        return ColdStart(enabled=cfg.cold_start.enabled)
    trained = load_candidates(cfg, plan)[evaluation.published]
    return infer_cold_start(cfg, plan, trained, meta)


def infer_cold_start(cfg: Config, plan: RunPlan, trained: ItemVectors, meta) -> ColdStart:
    """Write ``cold_start.parquet`` (and ``cold_start.json``) for ``meta``'s untrained items."""
    from embedding.quality.cold_start import cold_start_vectors, measure_cold_start, with_cold_start

    cold = cold_start_vectors(trained, meta, cfg.cold_start.k)
    cold_vectors, cold_ids = with_cold_start(ItemVectors([], np.zeros((0, trained.dim), np.float32),
                                                         np.zeros(0, np.int64)), cold)  # fmt: skip
    meta_market = dict(zip(meta.ids, meta.markets, strict=True))
    cold_markets = {i: meta_market.get(i) for i in cold_ids}
    chaos.point("cold_start.inferred")
    write_vectors(artefact(plan, COLD_START_FILE), cold_vectors, cold_markets, cold_ids)
    trained_ids = set(trained.ids)
    n_table = len(meta.ids)
    covered = sum(1 for i in meta.ids if i in trained_ids) + len(cold)
    measured = None
    if cfg.cold_start.measure_items:
        measured = measure_cold_start(
            trained, meta, cfg.cold_start.k, cfg.cold_start.measure_items, cfg.seed
        )
    result = ColdStart(
        enabled=True,
        k=cfg.cold_start.k,
        n_table_items=n_table,
        n_cold_start=len(cold),
        coverage_trained=sum(1 for i in meta.ids if i in trained_ids) / n_table,
        coverage=covered / n_table,
        measured=measured,
    )
    logger.info("cold start: %s", result)
    write_text_atomic(artefact(plan, "cold_start.json"), json.dumps(result.to_dict(), indent=1))
    return result
