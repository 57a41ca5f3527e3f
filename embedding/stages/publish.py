"""The publish stage: the chosen candidate (refit and cold-start rows added), its manifest and
report, published atomically; or an interrupted publish of the same version finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from embedding.core import chaos
from embedding.core.atomic import write_text_atomic
from embedding.core.config import Config
from embedding.core.errors import QualityGateError
from embedding.stages.cold_start import COLD_START_FILE
from embedding.stages.inputs import item_markets, load_item_meta
from embedding.stages.plan import RunPlan, artefact
from embedding.stages.results import ColdStart, Evaluation, Published, manifest_metrics
from embedding.stages.train import load_candidates, refit_stage
from embedding.vectors import publish
from embedding.vectors.item_vectors import ItemVectors
from embedding.vectors.parquet_io import read_vectors
from embedding.vectors.publish import FaultHook

logger = logging.getLogger(__name__)


LAST_PUBLISH = "last_publish.json"  # outcome of the latest publish stage, for `versions --last-run`


REPORT_FILE = "report.html"


def manifest_fields(
    cfg: Config,
    plan: RunPlan,
    evaluation: Evaluation,
    cold_start: ColdStart,
    extra: dict | None,
) -> dict:
    finetune_stats = artefact(plan, "finetune_stats.json")
    w2v_stats = artefact(plan, "word2vec_stats.json")
    return {
        "data_interval": {"start": plan.interval_start, "end": plan.interval_end},
        "days": plan.days,
        "input_hashes": plan.input_hashes,
        "code_hash": publish.source_hash(),
        "config_hash": cfg.fingerprint(),
        "params": cfg.model_dump(mode="json", exclude={"paths"}),
        "metrics": manifest_metrics(evaluation, cold_start),
        "gate": evaluation.gate.to_dict(),
        "finetune": json.loads(finetune_stats.read_text()) if finetune_stats.is_file() else {},
        "word2vec": json.loads(w2v_stats.read_text()) if w2v_stats.is_file() else {},
        **(extra or {}),
    }


def version_report(
    version: str, manifest: dict, vectors: ItemVectors, markets: dict, seed: int = 0
) -> str:
    """The HTML report of a version from its manifest fields and vectors (CONTRACTS §2)."""
    from embedding.quality.gate import GateVerdict
    from embedding.quality.report import ReportData, render_report

    data = ReportData(
        version=version,
        metrics=manifest.get("metrics", {}),
        gate=GateVerdict.from_dict(manifest.get("gate") or {}),
        vectors=vectors,
        markets=markets,
        word2vec_history=manifest.get("word2vec", {}).get("history", []),
        finetune_history=manifest.get("finetune", {}).get("history", []),
        finetune_stats=manifest.get("finetune", {}),
        params=manifest.get("params"),
        data_interval=manifest.get("data_interval"),
        word2vec_resolved=manifest.get("word2vec", {}).get("resolved"),
    )
    return render_report(data, seed=seed)


def publish_stage(
    cfg: Config,
    plan: RunPlan,
    evaluation: Evaluation,
    cold_start: ColdStart,
    extra: dict | None = None,
    fault: FaultHook | None = None,
) -> Published:
    """Publish the gated candidate (or finish the publish of an existing complete version)."""
    from embedding.vectors.ann_index import write_version_index

    root = Path(plan.publish_root)
    if plan.already_published:
        result = publish.finish_publish(root, plan.version, cfg.publish.keep_versions)
        logger.info("%s is already published; CURRENT is %s", plan.version, result.current)
    elif not evaluation.gate.passed:
        raise QualityGateError(f"refusing to publish {plan.version}: the gate did not pass")
    else:
        extra = dict(extra or {})
        final, markets, cold = final_vectors(cfg, plan, evaluation.published, extra)
        fields = manifest_fields(cfg, plan, evaluation, cold_start, extra)
        report = version_report(plan.version, fields, final, markets, cfg.seed)
        chaos.point("publish.report")
        result = publish.publish_version(
            root,
            plan.version,
            final,
            markets,
            fields,
            fault=fault or chaos.publish_fault,
            cold_start=cold,
            extra_files={REPORT_FILE: report},
            keep_versions=cfg.publish.keep_versions,
            write_extra=lambda folder: write_version_index(folder, cfg.serving),
        )
    outcome = Published(**asdict(result), data_interval=(plan.interval_start, plan.interval_end))
    write_text_atomic(Path(plan.work_dir) / LAST_PUBLISH, json.dumps(outcome.to_dict(), indent=1))
    return outcome


def final_vectors(
    cfg: Config, plan: RunPlan, chosen: str, extra: dict
) -> tuple[ItemVectors, dict, set[str]]:
    """The vectors to publish: the chosen candidate (refit on the whole window when configured,
    its refit record put in ``extra``) with the cold-start rows; their markets; the cold ids."""
    from embedding.quality.cold_start import cold_start_vectors, with_cold_start

    final = load_candidates(cfg, plan)[chosen]
    markets = item_markets(plan)
    cold: set[str] = set()
    cold_file = artefact(plan, COLD_START_FILE)
    if cfg.evaluate.refit:
        final, extra["refit"] = refit_stage(cfg, plan, chosen)
        meta = load_item_meta(plan)
        if meta is not None and cfg.cold_start.enabled:  # from the refit space
            vectors = cold_start_vectors(final, meta, cfg.cold_start.k)
            final, cold = with_cold_start(final, vectors)
            table_markets = dict(zip(meta.ids, meta.markets, strict=True))
            markets = {**{i: table_markets.get(i) for i in cold}, **markets}
    elif cold_file.is_file():
        extra_vectors, extra_markets = read_vectors(cold_file)
        final, cold = with_cold_start(
            final, dict(zip(extra_vectors.ids, extra_vectors.vectors, strict=True))
        )
        markets = {**extra_markets, **markets}
    return final, markets, cold
