"""The training stages: skip-gram (``word2vec.parquet``), the contrastive fine-tune
(``finetuned.parquet`` and the comparison loss's), and the refit on the whole window; and the
candidates they leave in the run folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import date
from pathlib import Path

import pyarrow as pa

from embedding.core import chaos
from embedding.core.atomic import write_text_atomic
from embedding.core.config import Config
from embedding.core.workdir import load_table, table_files
from embedding.quality.holdout import WindowData
from embedding.stages.inputs import item_markets, load_window, training_corpus
from embedding.stages.plan import RunPlan, artefact
from embedding.vectors.item_vectors import ItemVectors
from embedding.vectors.parquet_io import read_vectors, write_vectors

logger = logging.getLogger(__name__)


def train_stage(cfg: Config, plan: RunPlan) -> str:
    """Skip-gram on the training sessions, streamed from their Parquet files (validation and
    test sessions skipped) -> ``word2vec.parquet`` in the run folder."""
    from embedding.train.auto_params import resolve_for_corpus
    from embedding.train.w2v import peak_rss_mb, train_word2vec

    out = artefact(plan, "word2vec.parquet")
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
    write_text_atomic(artefact(plan, "word2vec_stats.json"), json.dumps(stats, indent=1))
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
    out = artefact(plan, "finetuned.parquet")
    if plan.already_published:
        return str(out)
    base, _ = read_vectors(artefact(plan, "word2vec.parquet"))
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
            checkpoints.append(artefact(plan, f"{name}.ckpt"))
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
            write_vectors(artefact(plan, f"{name}.parquet"), tuned)
            if name == "finetuned":
                stats.update(asdict(ft_stats))
            else:
                stats.setdefault("comparison", {})[name] = asdict(ft_stats)
    write_text_atomic(artefact(plan, "finetune_stats.json"), json.dumps(stats, indent=1))
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

    out = artefact(plan, REFIT_FILE)
    days = [date.fromisoformat(d) for d in plan.days]
    work = Path(plan.work_dir)
    w2v_stats = json.loads(artefact(plan, "word2vec_stats.json").read_text())
    resolved = {k: v for k, v in w2v_stats["resolved"].items() if k != "derived_from_corpus"}
    params = cfg.word2vec.model_validate(resolved)
    ft_stats = json.loads(artefact(plan, "finetune_stats.json").read_text())
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
                              checkpoint=artefact(plan, "refit.ckpt"))  # fmt: skip
    chaos.point("publish.refit")
    write_vectors(out, vectors)
    artefact(plan, "refit.ckpt").unlink(missing_ok=True)
    logger.info("refit on all %d sessions of the window: %s", sessions.num_rows, record)
    return vectors, record


def _no_pairs() -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in
                     ("session_id", "context_item", "booked_item", "market")})  # fmt: skip


def load_candidates(cfg: Config, plan: RunPlan) -> dict[str, ItemVectors]:
    candidates = {"word2vec": read_vectors(artefact(plan, "word2vec.parquet"))[0]}
    if cfg.finetune.enabled:
        candidates["finetuned"] = read_vectors(artefact(plan, "finetuned.parquet"))[0]
        if other := comparison_loss(cfg):
            name = f"finetuned_{other}"
            candidates[name] = read_vectors(artefact(plan, f"{name}.parquet"))[0]
    return candidates
