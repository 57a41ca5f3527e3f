"""The pipeline's stages as plain functions, wired by the CLI (``run_pipeline``) and the DAG.

Each stage takes the config and a ``RunPlan`` (a small JSON-able record: paths, the data
interval, the version id), reads its inputs from disk and writes its outputs to the run folder
``<work_dir>/runs/<version>/``, so the DAG can pass plans and paths through XCom and a retried
task redoes only its own step. Stages after planning do nothing when the version is already
published, except ``publish_stage``, which then finishes an interrupted publish.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.core import chaos
from embedding.core.atomic import remove_temp_files, write_text_atomic
from embedding.core.config import Config
from embedding.core.errors import InputError, QualityGateError
from embedding.core.lock import held_here
from embedding.core.workdir import load_table, missing_days, read_marker, table_files
from embedding.core.workdir import window_days as list_window_days
from embedding.quality.holdout import WindowData, split_holdout, split_sessions
from embedding.stages.sessionize_app import Sessionizer, as_dict, submit_sessionize
from embedding.vectors import publish
from embedding.vectors.item_vectors import ItemVectors
from embedding.vectors.parquet_io import VECTORS_FILE, read_vectors, write_vectors
from embedding.vectors.publish import FaultHook

logger = logging.getLogger(__name__)

LAST_PUBLISH = "last_publish.json"  # outcome of the latest publish stage, for `versions --last-run`
TABLE_HASHES = ("sessions_hash", "booking_pairs_hash", "item_stats_hash")


@dataclass(frozen=True)
class Paths:
    input: str
    publish_root: str
    work_dir: str
    items: str | None = None  # the item table (CONTRACTS §1b), when the source has one


def writer_lock(
    paths: Paths,
    command: str,
    run: str | None = None,
    scope: str | None = None,
    release: bool = False,
    wait_s: float | None = None,
):
    """Hold the work folder and the publish root for one writer (``embedding.core.lock.exclusive``):
    a CLI run for its life, a DAG task for its own and, through the lease, its whole run."""
    from embedding.core.lock import exclusive

    return exclusive([paths.work_dir, paths.publish_root], command, run, scope, release, wait_s)


def resolve_paths(
    cfg: Config,
    input_path: Path | str | None = None,
    publish_root: Path | str | None = None,
    work_dir: Path | str | None = None,
    items_path: Path | str | None = None,
) -> Paths:
    """Explicit paths (CLI, relative to the cwd) win over config paths (relative to the project)."""
    p = cfg.paths
    root = Path(publish_root).resolve() if publish_root else p.resolve(p.publish_root)
    if input_path:
        source = Path(input_path).resolve()
    elif p.input:
        source = p.resolve(p.input)
    else:
        raise InputError("no input: pass --input or set paths.input in the config")
    if work_dir:
        work = Path(work_dir).resolve()
    elif p.work_dir:
        work = p.resolve(p.work_dir)
    else:
        work = root / ".work"
    if items_path:
        items = str(Path(items_path).resolve())
    else:
        items = str(p.resolve(p.items)) if p.items else None
    return Paths(str(source), str(root), str(work), items)


@dataclass(frozen=True)
class RunPlan:
    version: str
    interval_start: str  # the data interval trained on: [start, end)
    interval_end: str
    days: list[str]  # window days that hold sessions
    publish_root: str
    work_dir: str
    run_dir: str
    already_published: bool
    input_hashes: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunPlan:
        return cls(**data)


def sessionize_stage(
    cfg: Config, paths: Paths, days: list[date] | None, job: Sessionizer | None = None
) -> dict:
    """Validate the click log and build the sessions of ``days`` (None: all its days).

    ``job``: the sessionize job run in this process (``jobs.sessionize.run_sessionize``, passed
    by callers that import ``jobs``); None launches it as an application of its own
    (``embedding.stages.sessionize_app``)."""
    items = Path(paths.items) if paths.items else None
    result = (job or submit_sessionize)(cfg, Path(paths.input), Path(paths.work_dir), days, items)
    return as_dict(result)


def days_to_sessionize(
    cfg: Config, paths: Paths, interval_start: date, interval_end: date
) -> list[date]:
    """The run's own days (always rebuilt) plus window days that have no partition yet."""
    own = [interval_start + timedelta(days=i) for i in range((interval_end - interval_start).days)]
    window = list_window_days(interval_end, cfg.window.days)
    return sorted(set(own) | set(missing_days(Path(paths.work_dir), window)))


def plan_run(cfg: Config, paths: Paths, interval_start: date, interval_end: date) -> RunPlan:
    """Fix the training window and the version id; find out whether it is already published."""
    work = Path(paths.work_dir)
    days, hashes = [], {}
    for day in [
        interval_start + timedelta(days=i) for i in range((interval_end - interval_start).days)
    ]:
        marker = read_marker(work, day)
        if marker is None:
            raise InputError(
                f"day {day} has not been sessionized ({work}/_days/{day}.json missing)"
            )
        if marker.get("n_sessions", 0) > 0:
            days.append(str(day))
            hashes[str(day)] = ":".join(marker[h] for h in TABLE_HASHES)
    if not days:
        raise InputError(f"no sessions in the window {interval_start}..{interval_end}")
    last_day = date.fromisoformat(days[-1])
    version = publish.version_id(
        last_day, cfg.fingerprint(), publish.source_hash(), [f"{d}={h}" for d, h in hashes.items()]
    )
    root = Path(paths.publish_root)
    plan = RunPlan(
        version=version,
        interval_start=str(interval_start),
        interval_end=str(interval_end),
        days=days,
        publish_root=str(root),
        work_dir=str(work),
        run_dir=str(work / "runs" / version),
        already_published=publish.is_published(root, version),
        input_hashes=hashes,
    )
    Path(plan.run_dir).mkdir(parents=True, exist_ok=True)
    if held_here(work):  # nobody else writes here: temp files are a killed writer's
        remove_temp_files(Path(plan.run_dir))
    logger.info(
        "plan: version %s over %s..%s (%d days with sessions)%s",
        version,
        interval_start,
        interval_end,
        len(days),
        ", already published" if plan.already_published else "",
    )
    return plan


def load_window(cfg: Config, plan: RunPlan) -> WindowData:
    days = [date.fromisoformat(d) for d in plan.days]
    work = Path(plan.work_dir)
    sessions = load_table(work, "sessions", days)
    if sessions is None:
        raise InputError(f"no session files for {plan.days[0]}..{plan.days[-1]} under {work}")
    return split_holdout(sessions, load_table(work, "booking_pairs", days), cfg.evaluate)


def test_conversions(plan: RunPlan, test_sessions: pa.Table) -> pa.Table | None:
    """The conversions (bookings) of the held-out sessions."""
    days = [date.fromisoformat(d) for d in plan.days]
    conversions = load_table(Path(plan.work_dir), "conversions", days)
    if conversions is None:
        return None
    test_ids = test_sessions.column("session_id")
    return conversions.filter(pc.is_in(conversions.column("session_id"), value_set=test_ids))


def item_markets(plan: RunPlan) -> dict[str, str | None]:
    """Each item's most frequent market over the window (from the per-day item stats)."""
    stats = load_table(
        Path(plan.work_dir), "item_stats", [date.fromisoformat(d) for d in plan.days]
    )
    if stats is None:
        return {}
    votes: dict[str, Counter] = {}
    for item, market, n in zip(
        stats.column("item_id").to_pylist(),
        stats.column("market").to_pylist(),
        stats.column("n_events").to_pylist(),
        strict=True,
    ):
        votes.setdefault(item, Counter())[market] += n
    return {
        item: max(c.items(), key=lambda kv: (kv[1], kv[0] or ""))[0] for item, c in votes.items()
    }


COLD_START_FILE = "cold_start.parquet"
REPORT_FILE = "report.html"


def load_item_meta(plan: RunPlan):
    """The item table of the window (latest row per item), or None when the source has none."""
    from embedding.quality.cold_start import item_meta

    days = [date.fromisoformat(d) for d in plan.days]
    items = load_table(Path(plan.work_dir), "items", days)
    if items is None or items.num_rows == 0:
        return None
    return item_meta(items)


def cold_start_stage(cfg: Config, plan: RunPlan, trained: ItemVectors, meta) -> dict:
    """Cold-start vectors for the item table's untrained items, and how well they work."""
    from embedding.quality.cold_start import cold_start_vectors, measure_cold_start, with_cold_start

    if meta is None or not cfg.cold_start.enabled:
        return {"enabled": cfg.cold_start.enabled, "n_table_items": 0, "n_cold_start": 0}
    cold = cold_start_vectors(trained, meta, cfg.cold_start.k)
    cold_vectors, cold_ids = with_cold_start(ItemVectors([], np.zeros((0, trained.dim), np.float32),
                                                         np.zeros(0, np.int64)), cold)  # fmt: skip
    meta_market = dict(zip(meta.ids, meta.markets, strict=True))
    cold_markets = {i: meta_market.get(i) for i in cold_ids}
    chaos.point("cold_start.inferred")
    write_vectors(_artefact(plan, COLD_START_FILE), cold_vectors, cold_markets, cold_ids)
    trained_ids = set(trained.ids)
    n_table = len(meta.ids)
    covered = sum(1 for i in meta.ids if i in trained_ids) + len(cold)
    result = {
        "enabled": True,
        "k": cfg.cold_start.k,
        "n_table_items": n_table,
        "n_cold_start": len(cold),
        "coverage_trained": sum(1 for i in meta.ids if i in trained_ids) / n_table,
        "coverage": covered / n_table,
    }
    if cfg.cold_start.measure_items:
        result["measured"] = measure_cold_start(
            trained, meta, cfg.cold_start.k, cfg.cold_start.measure_items, cfg.seed
        )
    logger.info("cold start: %s", result)
    write_text_atomic(_artefact(plan, "cold_start.json"), json.dumps(result, indent=1))
    return result


def _artefact(plan: RunPlan, name: str) -> Path:
    return Path(plan.run_dir) / name


def training_corpus(cfg: Config, plan: RunPlan):
    """The training sessions of the window as a ``ParquetSessionCorpus``: the split is computed
    from the session keys alone, and validation and test sessions are skipped in the stream."""
    from embedding.train.corpus import ParquetSessionCorpus

    days = [date.fromisoformat(d) for d in plan.days]
    work = Path(plan.work_dir)
    keys = load_table(work, "sessions", days, columns=["session_id", "start_ts", "item_ids"])
    if keys is None:
        raise InputError(f"no session files for {plan.days[0]}..{plan.days[-1]} under {work}")
    split = split_sessions(keys, cfg.evaluate)
    held_out = keys.column("session_id").filter(pa.array(~split.is_train)).to_pylist()
    return ParquetSessionCorpus(
        table_files(work, "sessions", days), set(held_out), cfg.word2vec.booked_oversample
    )


def train_stage(cfg: Config, plan: RunPlan) -> str:
    """Skip-gram on the training sessions, streamed from their Parquet files (validation and
    test sessions skipped) -> ``word2vec.parquet`` in the run folder."""
    from embedding.train.auto_params import resolve_for_corpus
    from embedding.train.w2v import peak_rss_mb, train_word2vec

    out = _artefact(plan, "word2vec.parquet")
    if plan.already_published:
        return str(out)
    corpus = training_corpus(cfg, plan)
    history: list[dict] = []
    params, derived = resolve_for_corpus(cfg.word2vec, corpus)
    if params.trainer == "torch":
        from embedding.train.sgns import train_sgns

        train = load_window(cfg, plan).train_sessions
        vectors = train_sgns(
            train.column("item_ids").to_pylist(),
            params,
            cfg.seed,
            booked=train.column("booked_items").to_pylist(),
            markets=item_markets(plan),
            history=history,
        )
    else:
        vectors = train_word2vec(corpus, params, cfg.seed, history)
    write_vectors(out, vectors)
    stats = {
        "resolved": {**params.model_dump(mode="json"), "derived_from_corpus": derived},
        "history": history,
        "corpus": "streamed from the sessions Parquet files, then replayed as int32 codes",
        "corpus_codes_mb": round(corpus.cache_bytes / 2**20, 2),
        "n_sessions": corpus.n_sessions,
        "n_booked_sessions": corpus.n_booked,
        "booked_oversample": cfg.word2vec.booked_oversample,
        "n_items": len(vectors.ids),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    write_text_atomic(_artefact(plan, "word2vec_stats.json"), json.dumps(stats, indent=1))
    return str(out)


def comparison_loss(cfg: Config) -> str | None:
    """The loss trained alongside the configured one for the report, or None."""
    if not (cfg.finetune.enabled and cfg.finetune.compare_loss):
        return None
    return "triplet" if cfg.finetune.loss == "infonce" else "infonce"


def transition_pairs(item_lists: list[list[str]], window: int) -> tuple[list[str], list[str]]:
    """(item, item up to ``window`` positions later) of every session, repeats left out."""
    first: list[str] = []
    second: list[str] = []
    for items in item_lists:
        for d in range(1, window + 1):
            for a, b in zip(items, items[d:], strict=False):
                if a != b:
                    first.append(a)
                    second.append(b)
    return first, second


def finetune_pairs(cfg: Config, data: WindowData) -> tuple[tuple[list, list], tuple[list, list]]:
    """The fine-tune's (train, validation) pairs as (context, target) lists: booking pairs,
    click transitions (validation: next-item pairs of the validation sessions) or both."""
    train_ctx: list[str] = []
    train_tgt: list[str] = []
    val_ctx: list[str] = []
    val_tgt: list[str] = []
    if cfg.finetune.pairs in ("booking", "both"):
        train_ctx += data.train_pairs.column("context_item").to_pylist()
        train_tgt += data.train_pairs.column("booked_item").to_pylist()
        val_ctx += data.val_pairs.column("context_item").to_pylist()
        val_tgt += data.val_pairs.column("booked_item").to_pylist()
    if cfg.finetune.pairs in ("transitions", "both"):
        window = cfg.finetune.transition_window
        a, b = transition_pairs(data.train_sessions.column("item_ids").to_pylist(), window)
        train_ctx += a
        train_tgt += b
        a, b = transition_pairs(data.val_sessions.column("item_ids").to_pylist(), 1)
        val_ctx += a
        val_tgt += b
    return (train_ctx, train_tgt), (val_ctx, val_tgt)


def finetune_stage(cfg: Config, plan: RunPlan) -> str:
    """Contrastive fine-tune on the training booking pairs, early-stopped on the validation
    sessions' pairs -> ``finetuned.parquet``; with ``compare_loss`` the other loss too
    (``finetuned_<loss>.parquet``, reported next to it, never published)."""
    out = _artefact(plan, "finetuned.parquet")
    if plan.already_published:
        return str(out)
    base, _ = read_vectors(_artefact(plan, "word2vec.parquet"))
    stats: dict = {"enabled": cfg.finetune.enabled}
    checkpoints: list[Path] = []  # one per fine-tune, deleted once the stats are written
    if cfg.finetune.enabled:
        from embedding.train.finetune import finetune

        data = load_window(cfg, plan)
        markets = item_markets(plan)
        (ctx, bkd), (val_ctx, val_bkd) = finetune_pairs(cfg, data)
        stats["pairs"] = cfg.finetune.pairs
        runs = {"finetuned": cfg.finetune.loss}
        if other := comparison_loss(cfg):
            runs[f"finetuned_{other}"] = other
        for name, loss in runs.items():
            checkpoints.append(_artefact(plan, f"{name}.ckpt"))
            tuned, ft_stats = finetune(
                base,
                ctx,
                bkd,
                cfg.finetune,
                cfg.seed,
                markets=markets,
                val_context=val_ctx,
                val_booked=val_bkd,
                loss=loss,
                checkpoint=checkpoints[-1],
            )
            write_vectors(_artefact(plan, f"{name}.parquet"), tuned)
            if name == "finetuned":
                stats.update(asdict(ft_stats))
            else:
                stats.setdefault("comparison", {})[name] = asdict(ft_stats)
    write_text_atomic(_artefact(plan, "finetune_stats.json"), json.dumps(stats, indent=1))
    for checkpoint in checkpoints:
        checkpoint.unlink(missing_ok=True)
    return str(out)


SELECTABLE = ("word2vec", "finetuned")  # the comparison loss is reported, never published
REFIT_FILE = "refit.parquet"


def refit_stage(cfg: Config, plan: RunPlan, chosen: str) -> tuple[ItemVectors, dict]:
    """The chosen candidate retrained on every session of the window (train, validation and
    test) with the settings the gated run used: the same resolved skip-gram knobs and, for the
    fine-tuned vectors, as many fine-tune epochs as validation chose. -> ``refit.parquet``
    (reused when a retried publish finds it)."""
    from embedding.train.corpus import ParquetSessionCorpus
    from embedding.train.w2v import train_word2vec

    out = _artefact(plan, REFIT_FILE)
    days = [date.fromisoformat(d) for d in plan.days]
    work = Path(plan.work_dir)
    w2v_stats = json.loads(_artefact(plan, "word2vec_stats.json").read_text())
    resolved = {k: v for k, v in w2v_stats["resolved"].items() if k != "derived_from_corpus"}
    params = cfg.word2vec.model_validate(resolved)
    ft_stats = json.loads(_artefact(plan, "finetune_stats.json").read_text())
    epochs = int(ft_stats.get("best_epoch") or 0) if chosen == "finetuned" else 0
    record = {"chosen": chosen, "word2vec_epochs": params.epochs, "finetune_epochs": epochs}
    if out.is_file():
        return read_vectors(out)[0], record
    sessions = load_table(work, "sessions", days)
    record["n_sessions"] = sessions.num_rows
    if params.trainer == "torch":
        from embedding.train.sgns import train_sgns

        vectors = train_sgns(sessions.column("item_ids").to_pylist(), params, cfg.seed,
                             booked=sessions.column("booked_items").to_pylist(),
                             markets=item_markets(plan))  # fmt: skip
    else:
        corpus = ParquetSessionCorpus(
            table_files(work, "sessions", days), set(), params.booked_oversample
        )
        vectors = train_word2vec(corpus, params, cfg.seed)
    if epochs > 0:
        from embedding.train.finetune import finetune

        everything = WindowData(sessions, sessions.slice(0, 0), sessions.slice(0, 0),
                                load_table(work, "booking_pairs", days) or _no_pairs(),
                                _no_pairs(), "", "")  # fmt: skip
        (ctx, tgt), _ = finetune_pairs(cfg, everything)
        ft = cfg.finetune.model_copy(update={"epochs": epochs, "val_fraction": 0.0})
        vectors, _ = finetune(vectors, ctx, tgt, ft, cfg.seed, markets=item_markets(plan),
                              fixed_epochs=True,
                              checkpoint=_artefact(plan, "refit.ckpt"))  # fmt: skip
    chaos.point("publish.refit")
    write_vectors(out, vectors)
    _artefact(plan, "refit.ckpt").unlink(missing_ok=True)
    logger.info("refit on all %d sessions of the window: %s", sessions.num_rows, record)
    return vectors, record


def _no_pairs() -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in
                     ("session_id", "context_item", "booked_item", "market")})  # fmt: skip


def _candidates(cfg: Config, plan: RunPlan) -> dict[str, ItemVectors]:
    candidates = {"word2vec": read_vectors(_artefact(plan, "word2vec.parquet"))[0]}
    if cfg.finetune.enabled:
        candidates["finetuned"] = read_vectors(_artefact(plan, "finetuned.parquet"))[0]
        if other := comparison_loss(cfg):
            name = f"finetuned_{other}"
            candidates[name] = read_vectors(_artefact(plan, f"{name}.parquet"))[0]
    return candidates


def evaluate_stage(cfg: Config, plan: RunPlan) -> dict:
    """Metrics of every candidate and the popularity baseline, and the gate verdict."""
    from embedding.quality.evaluate import (
        check_gate,
        evaluate_candidates,
        score_previous,
        select_on_validation,
    )

    out = _artefact(plan, "metrics.json")
    if plan.already_published:
        manifest = publish.verify_version(Path(plan.publish_root) / publish.VERSIONS / plan.version)
        return {"metrics": manifest.get("metrics", {}), "gate": manifest.get("gate", {})}
    data = load_window(cfg, plan)
    candidates = _candidates(cfg, plan)
    metrics = evaluate_candidates(
        candidates,
        data.train_sessions,
        data.test_sessions,
        cfg.evaluate,
        cfg.seed,
        test_conversions(plan, data.test_sessions),
        cfg.evaluate.ppmi_svd_dim or candidates["word2vec"].dim,
        cfg.gate,
    )
    metrics["holdout"] = data.holdout
    selectable = {n: v for n, v in candidates.items() if n in SELECTABLE}
    metrics["selection"] = {
        "split": data.validation,
        "n_sessions": data.val_sessions.num_rows,
        **select_on_validation(selectable, data.val_sessions, cfg.evaluate, cfg.gate.metric,
                               cfg.seed),
    }  # fmt: skip
    metrics["published"] = metrics["selection"]["chosen"]
    metrics["cold_start"] = cold_start_stage(
        cfg, plan, candidates[metrics["published"]], load_item_meta(plan)
    )
    root = Path(plan.publish_root)
    previous = publish.previous_version(root, publish.version_day(plan.version))
    metrics["previous"] = None
    if previous is not None:
        # like with like: the candidate is scored without cold-start rows, so the previous
        # version is too (its cold-start rows would cover cases the candidate cannot)
        old, _ = read_vectors(root / publish.VERSIONS / previous / VECTORS_FILE, trained_only=True)
        metrics["previous"] = score_previous(
            old, previous, candidates[metrics["published"]], data.test_sessions,
            cfg.evaluate, cfg.seed,
        )  # fmt: skip
    gate = check_gate(metrics, metrics["published"], cfg.gate)
    result = {"metrics": metrics, "gate": gate}
    chaos.point("evaluate.scored")
    write_text_atomic(out, json.dumps(result, indent=1))
    return result


def _manifest_fields(cfg: Config, plan: RunPlan, evaluation: dict, extra: dict | None) -> dict:
    finetune_stats = _artefact(plan, "finetune_stats.json")
    w2v_stats = _artefact(plan, "word2vec_stats.json")
    return {
        "data_interval": {"start": plan.interval_start, "end": plan.interval_end},
        "days": plan.days,
        "input_hashes": plan.input_hashes,
        "code_hash": publish.source_hash(),
        "config_hash": cfg.fingerprint(),
        "params": cfg.model_dump(mode="json", exclude={"paths"}),
        "metrics": evaluation["metrics"],
        "gate": evaluation["gate"],
        "finetune": json.loads(finetune_stats.read_text()) if finetune_stats.is_file() else {},
        "word2vec": json.loads(w2v_stats.read_text()) if w2v_stats.is_file() else {},
        **(extra or {}),
    }


def version_report(
    version: str, manifest: dict, vectors: ItemVectors, markets: dict, seed: int = 0
) -> str:
    """The HTML report of a version from its manifest fields and vectors (CONTRACTS §2)."""
    from embedding.quality.report import ReportData, render_report

    data = ReportData(
        version=version,
        metrics=manifest.get("metrics", {}),
        gate=manifest.get("gate", {}),
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


def gate_stage(cfg: Config, plan: RunPlan, evaluation: dict, extra: dict | None = None) -> None:
    """Raise QualityGateError (after recording the candidate under ``rejected/``) on failure."""
    if plan.already_published or evaluation["gate"]["passed"]:
        return
    fields = _manifest_fields(cfg, plan, evaluation, extra)
    candidate = _candidates(cfg, plan)[evaluation["metrics"]["published"]]
    report = version_report(plan.version, fields, candidate, item_markets(plan), cfg.seed)
    target = publish.reject_version(
        Path(plan.publish_root), plan.version, fields, {REPORT_FILE: report}
    )
    raise QualityGateError(
        f"quality gate failed for {plan.version}: {evaluation['gate']['reason']}; "
        f"candidate recorded in {target}, CURRENT unchanged"
    )


def publish_stage(
    cfg: Config,
    plan: RunPlan,
    evaluation: dict,
    extra: dict | None = None,
    fault: FaultHook | None = None,
) -> dict:
    """Publish the gated candidate (or finish the publish of an existing complete version)."""
    root = Path(plan.publish_root)
    if plan.already_published:
        result = publish.finish_publish(root, plan.version, cfg.publish.keep_versions)
        logger.info("%s is already published; CURRENT is %s", plan.version, result.current)
    elif not evaluation["gate"]["passed"]:
        raise QualityGateError(f"refusing to publish {plan.version}: the gate did not pass")
    else:
        from embedding.quality.cold_start import with_cold_start
        from embedding.vectors.ann_index import write_version_index

        chosen = evaluation["metrics"]["published"]
        final = _candidates(cfg, plan)[chosen]
        markets = item_markets(plan)
        cold: set[str] = set()
        cold_file = _artefact(plan, COLD_START_FILE)
        extra = dict(extra or {})
        if cfg.evaluate.refit:
            from embedding.quality.cold_start import cold_start_vectors

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
        fields = _manifest_fields(cfg, plan, evaluation, extra)
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
    outcome = {**asdict(result), "data_interval": [plan.interval_start, plan.interval_end]}
    write_text_atomic((Path(plan.work_dir) / LAST_PUBLISH), json.dumps(outcome, indent=1))
    return outcome


def run_pipeline(
    cfg: Config,
    paths: Paths,
    interval: tuple[date, date] | None = None,
    fault: FaultHook | None = None,
    sessionize: Sessionizer | None = None,
) -> dict:
    """Every stage in order, as the DAG runs them (the CLI's ``run``).

    ``interval`` None: the whole input, first day to last day plus one. ``sessionize``: as
    ``sessionize_stage``'s ``job``.
    """
    days = None
    if interval is not None:
        days = days_to_sessionize(cfg, paths, *interval)
    ingest = sessionize_stage(cfg, paths, days, sessionize)
    if interval is None:
        interval = (
            date.fromisoformat(ingest["days"][0]),
            date.fromisoformat(ingest["days"][-1]) + timedelta(days=1),
        )
        start = interval[0]
    else:
        start = max(interval[1] - timedelta(days=cfg.window.days), date.min)
    plan = plan_run(cfg, paths, start, interval[1])
    extra = {"ingest": ingest}
    train_stage(cfg, plan)
    finetune_stage(cfg, plan)
    evaluation = evaluate_stage(cfg, plan)
    gate_stage(cfg, plan, evaluation, extra)
    published = publish_stage(cfg, plan, evaluation, extra, fault=fault)
    return {"plan": plan.to_dict(), "ingest": ingest, **evaluation, "publish": published}
