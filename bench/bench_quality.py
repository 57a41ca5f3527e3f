"""Offline quality of the default config, measured as the acceptance of issue 5 asks.

For each dataset (the generator's ``standard`` and ``sparse`` profiles, 200k events over 8 days,
and the trivago sample with ``conf/trivago.yaml``) the log is sessionized once, then the
training, fine-tuning and evaluation stages run for each seed, and once more with word2vec's
text defaults (5 epochs, min_count 5, ns_exponent 0.75, sample 1e-3, window 5, 100 dimensions,
5 negatives). Every figure is on the whole test split (cases whose items have no vector are
misses). The reference measured in the same run is the popularity baseline on the same cases.

Reported per dataset and seed: next-item HR@10 of popularity, co-occurrence, PPMI-SVD, base
skip-gram and fine-tuned, the base's lift over popularity, booked-item HR@10 of base and
fine-tuned, the vectors chosen on validation, the same-cluster share among the 10 nearest
neighbours (generated data: planted clusters), impression re-rank MRR (trivago), and training
time. Writes ``bench/results/quality.json``.

Usage::

    python -m bench.bench_quality [--seeds 1,2,3] [--datasets standard,sparse,trivago]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.common import git_commit, git_dirty
from embedding import PROJECT_ROOT
from embedding.config import Config, load_config

logger = logging.getLogger("bench.bench_quality")

DEFAULT_OUT = Path("bench/results/quality.json")
TRIVAGO = PROJECT_ROOT.parent / "shared" / "data" / "trivago_100k.parquet"
TEXT_DEFAULTS = [
    "word2vec.epochs=5",
    "word2vec.min_count=5",
    "word2vec.ns_exponent=0.75",
    "word2vec.sample=0.001",
    "word2vec.window=5",
    "word2vec.vector_size=100",
    "word2vec.negative=5",
    "word2vec.alpha=0.025",
    "word2vec.min_alpha=0.0001",
    "word2vec.booked_oversample=1",
]


def same_cluster_share(vectors, cluster_of: dict[str, str], k: int = 10, min_count: int = 5):
    """Mean share of the k nearest neighbours in the query's planted cluster, over items seen
    at least ``min_count`` times."""
    rows = np.flatnonzero(vectors.counts >= min_count)
    if rows.size == 0:
        return None
    clusters = np.array([cluster_of.get(i, "") for i in vectors.ids])
    hits = 0
    for lo in range(0, rows.size, 2048):
        q = rows[lo : lo + 2048]
        scores = vectors.vectors[q] @ vectors.vectors.T
        scores[np.arange(q.size), q] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits += int((clusters[top] == clusters[q][:, None]).sum())
    return hits / (rows.size * k)


def one_run(cfg: Config, paths, start, end, cluster_of: dict | None) -> dict:
    """Train, fine-tune and evaluate on an already sessionized window (no gate, no publish)."""
    from embedding import pipeline
    from embedding.vectors_io import read_vectors

    plan = pipeline.plan_run(cfg, paths, start, end)
    started = time.monotonic()
    pipeline.train_stage(cfg, plan)
    train_s = time.monotonic() - started
    pipeline.finetune_stage(cfg, plan)
    finetune_s = time.monotonic() - started - train_s
    metrics = pipeline.evaluate_stage(cfg, plan)["metrics"]
    names = [n for n in ("word2vec", "finetuned") if n in metrics]
    row = {
        "seed": cfg.seed,
        "train_s": round(train_s, 1),
        "finetune_s": round(finetune_s, 1),
        "coverage": metrics["coverage"],
        "n_cases": metrics["n_cases"],
        "hr@10": {n: metrics[n]["hr@10"] for n in (*metrics["baselines"], *names)},
        "booked_hr@10": {
            n: v["overall"]["hr@10"] for n, v in metrics.get("booked_item", {}).items()
        },
        "published": metrics["published"],
        "selection": metrics["selection"]["scores"],
        "lift_over_popularity": metrics["word2vec"]["hr@10"]
        / max(metrics["popularity"]["hr@10"], 1e-12),
    }
    if "impression_rerank" in metrics:
        row["impression_mrr"] = {
            k: v["mrr"] for k, v in metrics["impression_rerank"]["methods"].items()
        }
    if cluster_of is not None:
        row["same_cluster@10"] = {
            n: same_cluster_share(read_vectors(Path(plan.run_dir) / f"{n}.parquet")[0], cluster_of)
            for n in names
        }
    return row


def run_dataset(name: str, seeds: list[int], tmp: Path) -> dict:
    from embedding.generate import GROUND_TRUTH_FILE, generate_clicklog
    from embedding.pipeline import resolve_paths, sessionize_stage

    if name == "trivago":
        conf, log, cluster_of = PROJECT_ROOT / "conf" / "trivago.yaml", TRIVAGO, None
    else:
        conf, log = PROJECT_ROOT / "conf" / "default.yaml", tmp / name / "clicks"
        generate_clicklog(log, events=200_000, days=8, profile=name, seed=7)
        truth = pq.read_table(log / GROUND_TRUTH_FILE, columns=["item_id", "cluster"])
        cluster_of = dict(
            zip(truth["item_id"].to_pylist(), truth["cluster"].to_pylist(), strict=True)
        )
    base = load_config(conf)
    paths = resolve_paths(base, log, tmp / name / "pub")
    ingest = sessionize_stage(base, paths, None)
    start = datetime.date.fromisoformat(ingest["days"][0])
    end = datetime.date.fromisoformat(ingest["days"][-1]) + datetime.timedelta(days=1)
    start = max(start, end - datetime.timedelta(days=base.window.days))
    runs = []
    for seed in seeds:
        cfg = load_config(conf, [f"seed={seed}"])
        runs.append(one_run(cfg, paths, start, end, cluster_of))
        logger.info("%s seed %d: %s", name, seed, json.dumps(runs[-1]))
    text = one_run(load_config(conf, [f"seed={seeds[0]}", *TEXT_DEFAULTS]), paths, start, end,
                   cluster_of)  # fmt: skip
    logger.info("%s text defaults: %s", name, json.dumps(text))
    return {"conf": str(conf.relative_to(PROJECT_ROOT)), "input": str(log), "runs": runs,
            "text_defaults": text, "word2vec": base.word2vec.model_dump(),
            "finetune": base.finetune.model_dump()}  # fmt: skip


def print_table(results: dict) -> None:
    head = (
        f"{'dataset':<9} {'run':<8} {'pop':>6} {'cooc':>6} {'svd':>6} {'w2v':>6} {'ft':>6} "
        f"{'lift':>5} {'bk w2v':>7} {'bk ft':>6} {'clus w2v':>8} {'publ':>9} {'train s':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, data in results.items():
        for label, run in [*((f"seed {r['seed']}", r) for r in data["runs"]),
                           ("text-def", data["text_defaults"])]:  # fmt: skip
            hr, nan = run["hr@10"], float("nan")
            bk = run["booked_hr@10"]
            clus = (run.get("same_cluster@10") or {}).get("word2vec")
            print(
                f"{name:<9} {label:<8} {hr['popularity']:>6.3f} {hr.get('cooccurrence', 0):>6.3f} "
                f"{hr.get('ppmi_svd', 0):>6.3f} {hr['word2vec']:>6.3f} "
                f"{hr.get('finetuned', float('nan')):>6.3f} {run['lift_over_popularity']:>5.2f} "
                f"{bk.get('word2vec', nan):>7.3f} {bk.get('finetuned', nan):>6.3f} "
                f"{clus if clus is not None else float('nan'):>8.3f} {run['published']:>9} "
                f"{run['train_s']:>7.1f}"
            )
            if "impression_mrr" in run:
                print("          impression re-rank MRR: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in run["impression_mrr"].items()))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_quality",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--datasets", default="standard,sparse,trivago")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    for noisy in ("gensim", "py4j", "embedding.train_w2v", "embedding.finetune"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for name in args.datasets.split(","):
            results[name] = run_dataset(name, seeds, Path(tmp))
    print_table(results)
    report = {
        "benchmark": "quality",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "seeds": seeds,
        "text_defaults": TEXT_DEFAULTS,
        "datasets": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
