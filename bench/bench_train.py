"""Skip-gram training throughput: the project's ``train_word2vec`` against raw gensim.

Generates a ``standard`` synthetic click log (seed 7, 8 days) into a temporary folder and builds
session item lists without Spark (the benchmark measures training, not sessionization): rows
sorted by ``(user_id, ts)``, a new session where the user changes or the gap exceeds 30 min,
consecutive repeats collapsed, sessions with at least 2 distinct items kept. Unlike
``jobs.sessionize`` it does not cut at UTC midnight nor cap the session length.

Both methods train on the same corpus with the same ``Word2VecParams`` (defaults, ``workers=2``,
``epochs=10``) and seed:

- ``project``: ``train_word2vec(ParquetSessionCorpus(files), params, seed)``: the sessions are
  written to Parquet files as ``jobs.sessionize`` lays them out and streamed from them one record
  batch at a time, as the pipeline trains (the extra work is the Parquet decoding, a stable hash,
  loss tracking, the epoch log and row normalisation);
- ``reference``: ``gensim.models.Word2Vec(sentences=<list of lists>, ...)`` with the same knobs
  (``compute_loss=True`` included, as the project logs the loss per epoch) and nothing else (the
  same-run reference of STYLE rule 15); ``words_ratio`` compares with it, so it measures what
  streaming from Parquet costs;
- ``ref_noloss``: the same without the loss, to show what logging the loss costs;
- ``torch_sgns``: our own PyTorch trainer (``embedding.train.sgns``) on the same in-memory
  sessions and knobs, as many torch threads as gensim workers (``torch_words_ratio``).

Reported per method: median and best wall time of ``--repeats`` runs, words/s (corpus tokens x
epochs / median time), the ratio project / reference, and a quality figure from the ground truth:
the same-cluster share among the 10 nearest neighbours (cosine) of every item occurring at least
5 times. With ``workers=2`` runs are not bit-identical, so the quality figures differ slightly.
Peak RSS of the whole process is read at the end. Top-level keys: ``project_words_per_s``,
``gensim_words_per_s``, ``words_ratio`` (project words/s over gensim's), and the fine-tune
throughput ``finetune_pairs_per_s_cpu`` / ``finetune_pairs_per_s_gpu`` (null without CUDA; the
same code runs there), measured on every consecutive item pair of the sessions.

Usage::

    python -m bench.bench_train [--events 200000] [--repeats 3] [--out bench/results/train.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.common import git_commit, git_dirty
from embedding import PROJECT_ROOT
from embedding.core.config import SessionizeConfig, Word2VecParams, load_config
from embedding.devtools.generate import GROUND_TRUTH_FILE, generate_clicklog
from embedding.train.auto_params import resolve
from embedding.train.corpus import ParquetSessionCorpus
from embedding.train.w2v import train_word2vec
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

logger = logging.getLogger("bench.bench_train")

SEED = 7  # generator seed and training seed
DAYS = 8
PROFILE = "standard"
K = 10  # neighbours for the same-cluster figure
MIN_OCCURRENCES = 5  # items queried for the same-cluster figure
QUERY_CHUNK = 2048  # query rows per similarity block (bounds the (chunk, vocab) matrix)
DEFAULT_OUT = Path("bench/results/train.json")
DEFAULT_CONF = PROJECT_ROOT / "conf" / "default.yaml"


@dataclass(frozen=True)
class Sessions:
    """Session item lists built without Spark; ``booked`` marks sessions with a booking."""

    items: list[list[str]]
    booked: list[bool]
    n_events: int
    files: list[Path] = field(default_factory=list)  # the same sessions as Parquet (streamed)

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.items)


@dataclass
class MethodResult:
    """Wall times of one method and the same-cluster@K of each run's vectors."""

    name: str
    seconds: list[float] = field(default_factory=list)
    same_cluster: list[float] = field(default_factory=list)
    n_items: int = 0

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best_s(self) -> float:
        return min(self.seconds)


def build_sessions(log_dir: Path, rules: SessionizeConfig) -> Sessions:
    """Cut sessions from the Parquet click log with pyarrow and numpy (no Spark)."""
    table = pq.read_table(log_dir, columns=["user_id", "ts", "item_id", "event"])
    table = table.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    n = table.num_rows
    users = pc.dictionary_encode(table["user_id"]).combine_chunks()
    items = pc.dictionary_encode(table["item_id"]).combine_chunks()
    user_codes = users.indices.to_numpy(zero_copy_only=False)  # (n,)
    item_codes = items.indices.to_numpy(zero_copy_only=False)  # (n,)
    item_names = items.dictionary.to_pylist()
    ts_us = table["ts"].combine_chunks().cast("int64").to_numpy(zero_copy_only=False)  # (n,)
    booked_rows = pc.equal(table["event"], "book").combine_chunks().to_numpy(zero_copy_only=False)

    starts = np.ones(n, dtype=bool)  # (n,) True where a session starts
    gap_us = int(rules.gap_minutes * 60 * 1_000_000)
    starts[1:] = (user_codes[1:] != user_codes[:-1]) | (ts_us[1:] - ts_us[:-1] > gap_us)
    session_of_row = np.cumsum(starts) - 1  # (n,)
    keep = np.ones(n, dtype=bool)  # (n,) False for a consecutive repeat inside a session
    if rules.collapse_repeats:
        keep[1:] = starts[1:] | (item_codes[1:] != item_codes[:-1])
    n_sessions = int(session_of_row[-1]) + 1 if n else 0
    booked_sessions = np.zeros(n_sessions, dtype=bool)
    booked_sessions[session_of_row[booked_rows]] = True

    kept_items = item_codes[keep]
    bounds = np.flatnonzero(starts[keep])  # session starts within the kept rows
    out_items: list[list[str]] = []
    out_booked: list[bool] = []
    for s, (lo, hi) in enumerate(zip(bounds, [*bounds[1:], kept_items.size], strict=True)):
        codes = kept_items[lo:hi]
        if len(set(codes.tolist())) < rules.min_distinct_items:
            continue
        out_items.append([item_names[c] for c in codes.tolist()])
        out_booked.append(bool(booked_sessions[s]))
    logger.info(
        "sessions: %d events -> %d sessions, %d kept (>= %d distinct items)",
        n,
        n_sessions,
        len(out_items),
        rules.min_distinct_items,
    )
    return Sessions(items=out_items, booked=out_booked, n_events=n)


def same_cluster_at_k(
    ids: Sequence[str],
    vectors: np.ndarray,
    cluster_of: dict[str, str],
    counts: Counter[str],
    k: int = K,
    min_occurrences: int = MIN_OCCURRENCES,
) -> float:
    """Mean share of the k nearest neighbours (cosine, self excluded) in the query's cluster.

    ``vectors`` is (n_items, dim), rows L2-normalised; queries are the items occurring at least
    ``min_occurrences`` times in the corpus, neighbours come from all of ``ids``.
    """
    clusters = {c: i for i, c in enumerate(sorted(set(cluster_of.values())))}
    item_cluster = np.array([clusters.get(cluster_of.get(i, ""), -1) for i in ids])  # (n_items,)
    queries = np.array(
        [row for row, item in enumerate(ids) if counts[item] >= min_occurrences], dtype=np.int64
    )
    if queries.size == 0 or len(ids) <= k:
        return float("nan")
    hits = 0
    for lo in range(0, queries.size, QUERY_CHUNK):
        rows = queries[lo : lo + QUERY_CHUNK]  # (q,)
        sims = vectors[rows] @ vectors.T  # (q, n_items)
        sims[np.arange(rows.size), rows] = -np.inf  # not its own neighbour
        top = np.argpartition(-sims, k, axis=1)[:, :k]  # (q, k), unordered
        hits += int((item_cluster[top] == item_cluster[rows][:, None]).sum())
    return hits / (queries.size * k)


def write_session_files(sessions: Sessions, folder: Path, per_file: int = 50_000) -> list[Path]:
    """The sessions as Parquet files in the layout ``jobs.sessionize`` writes (item_ids,
    booked_items), so the project streams them as the pipeline does."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for part, lo in enumerate(range(0, len(sessions.items), per_file)):
        hi = min(lo + per_file, len(sessions.items))
        table = pa.table(
            {
                "session_id": pa.array([f"s{i:09d}" for i in range(lo, hi)], pa.string()),
                "item_ids": pa.array(sessions.items[lo:hi], pa.list_(pa.string())),
                "booked_items": pa.array(
                    [["x"] if b else [] for b in sessions.booked[lo:hi]], pa.list_(pa.string())
                ),
            }
        )
        files.append(folder / f"part-{part:05d}.parquet")
        pq.write_table(table, files[-1])
    return files


def corpus_memory(sessions: Sessions) -> dict:
    """Python-heap peak (tracemalloc) of one pass over the streamed corpus against holding the
    same sessions as one list read from the same files."""
    import tracemalloc

    tracemalloc.start()
    n = sum(1 for _ in ParquetSessionCorpus(sessions.files))
    _, streamed = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    whole = [
        s
        for f in sessions.files
        for s in pq.read_table(f, columns=["item_ids"])["item_ids"].to_pylist()
    ]
    _, listed = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == len(whole)
    return {"streamed_peak_mib": streamed / 2**20, "in_memory_list_mib": listed / 2**20}


def run_project(sessions: Sessions, params: Word2VecParams) -> tuple[float, list[str], np.ndarray]:
    corpus = ParquetSessionCorpus(sessions.files, oversample=params.booked_oversample)
    started = time.perf_counter()
    result = train_word2vec(corpus, params, SEED)
    elapsed = time.perf_counter() - started
    return elapsed, result.ids, result.vectors


def run_torch(sessions: Sessions, params: Word2VecParams) -> tuple[float, list[str], np.ndarray]:
    """Our own trainer (``embedding.train.sgns``, Airbnb's objective off: no bookings or markets
    given) on the same in-memory sessions and knobs, with as many torch threads as gensim has
    workers."""
    import torch

    from embedding.train.sgns import train_sgns

    torch.set_num_threads(params.workers)
    started = time.perf_counter()
    result = train_sgns(sessions.items, params.model_copy(update={"trainer": "torch"}), SEED)
    elapsed = time.perf_counter() - started
    return elapsed, result.ids, result.vectors


def finetune_throughput(
    ids: list[str], vectors: np.ndarray, sessions: Sessions, device: str
) -> dict:
    """Pairs/s of ``embedding.train.finetune.finetune`` on ``device`` (3 epochs, no early stop),
    with
    every consecutive item pair of the sessions standing in for booking pairs: the throughput
    of the training loop, validation recall included, not a quality figure."""
    from embedding.core.config import FinetuneParams
    from embedding.train.finetune import finetune

    base = ItemVectors(list(ids), normalize_rows(vectors), np.ones(len(ids), np.int64))
    context = [a for items in sessions.items for a in items[:-1]]
    booked = [b for items in sessions.items for b in items[1:]]
    params = FinetuneParams(epochs=3, patience=100, device=device)
    started = time.perf_counter()
    _, stats = finetune(base, context, booked, params, SEED)
    seconds = time.perf_counter() - started
    return {
        "device": stats.device,
        "pairs": stats.n_train,
        "epochs": stats.epochs_run,
        "seconds": seconds,
        "pairs_per_s": stats.n_train * stats.epochs_run / seconds,
    }


def run_reference(
    sessions: Sessions, params: Word2VecParams, compute_loss: bool = True
) -> tuple[float, list[str], np.ndarray]:
    """Raw gensim on the in-memory list. ``compute_loss`` as the project (which must log the
    loss per epoch), so the ratio measures the stream; ``reference_noloss`` shows its cost."""
    from gensim.models import Word2Vec

    sentences = [  # oversampled in memory, as the project does in its stream
        items
        for items, booked in zip(sessions.items, sessions.booked, strict=True)
        for _ in range(params.booked_oversample if booked else 1)
    ]
    started = time.perf_counter()
    model = Word2Vec(
        sentences=sentences,
        vector_size=params.vector_size,
        window=params.window,
        negative=params.negative,
        ns_exponent=params.ns_exponent,
        sample=params.sample,
        min_count=params.min_count,
        alpha=params.alpha,
        min_alpha=params.min_alpha,
        sg=params.sg,
        workers=params.workers,
        epochs=params.epochs,
        seed=SEED,
        compute_loss=compute_loss,
    )
    elapsed = time.perf_counter() - started
    return elapsed, list(model.wv.index_to_key), normalize_rows(np.asarray(model.wv.vectors))


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def print_table(results: Sequence[MethodResult], reference: MethodResult, words: int) -> None:
    header = (
        f"{'method':<10} {'median s':>9} {'best s':>8} {'words/s':>11} "
        f"{'ratio to ref':>12} {'same-cluster@' + str(K):>16}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<10} {r.median_s:>9.3f} {r.best_s:>8.3f} {words / r.median_s:>11,.0f} "
            f"{r.median_s / reference.median_s:>12.3f} "
            f"{statistics.median(r.same_cluster):>16.4f}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=200_000, help="click events to generate")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeats < 1:
        parser.error("--events and --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("gensim").setLevel(logging.WARNING)
    # the default config's knobs (conf/default.yaml), 10 epochs to keep the repeats short
    params = load_config(DEFAULT_CONF).word2vec.model_copy(update={"workers": 2, "epochs": 10})
    rules = SessionizeConfig()

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        log_dir = Path(tmp) / "clicks"
        logger.info("generating %d events (%s, seed %d, %d days)", args.events, PROFILE, SEED, DAYS)
        generate_clicklog(log_dir, events=args.events, days=DAYS, profile=PROFILE, seed=SEED)
        sessions = build_sessions(log_dir, rules)
        truth = pq.read_table(log_dir / GROUND_TRUTH_FILE, columns=["item_id", "cluster"])
    corpus_dir = tempfile.TemporaryDirectory(prefix="bench-train-sessions-")
    sessions.files.extend(write_session_files(sessions, Path(corpus_dir.name)))
    memory = corpus_memory(sessions)
    cluster_of = dict(zip(truth["item_id"].to_pylist(), truth["cluster"].to_pylist(), strict=True))
    counts = Counter(item for items in sessions.items for item in items)
    corpus_tokens = sum(
        len(items) * (params.booked_oversample if booked else 1)
        for items, booked in zip(sessions.items, sessions.booked, strict=True)
    )
    # knobs left to the corpus (vector_size, sample) resolved as the pipeline would
    params = resolve(params, corpus_tokens, len(counts))[0]
    words = corpus_tokens * params.epochs
    rss_before_mib = peak_rss_mib()
    import gensim.models  # imported before timing, so no run pays for the import

    load_before = os.getloadavg()

    methods: dict[str, Callable[[Sessions, Word2VecParams], tuple[float, list[str], np.ndarray]]]
    methods = {
        "project": run_project,
        "reference": run_reference,
        "ref_noloss": lambda sessions, params: run_reference(sessions, params, False),
        "torch_sgns": run_torch,
    }
    results = {name: MethodResult(name) for name in methods}
    for repeat in range(args.repeats):
        order = list(methods) if repeat % 2 == 0 else list(reversed(methods))  # spread drift
        for name in order:
            seconds, ids, vectors = methods[name](sessions, params)
            quality = same_cluster_at_k(ids, vectors, cluster_of, counts)
            results[name].seconds.append(seconds)
            results[name].same_cluster.append(quality)
            results[name].n_items = len(ids)
            logger.info(
                "repeat %d/%d %s: %.3f s, %d items, same-cluster@%d %.4f",
                repeat + 1,
                args.repeats,
                name,
                seconds,
                len(ids),
                K,
                quality,
            )
    import torch

    seconds, ids, vectors = run_project(sessions, params)
    finetune_runs = {"cpu": finetune_throughput(ids, vectors, sessions, "cpu")}
    if torch.cuda.is_available():
        finetune_runs["cuda"] = finetune_throughput(ids, vectors, sessions, "cuda")
    for device, run in finetune_runs.items():
        logger.info("fine-tune on %s: %.0f pairs/s (%d pairs x %d epochs in %.1f s)", device,
                    run["pairs_per_s"], run["pairs"], run["epochs"], run["seconds"])  # fmt: skip
    peak_mib = peak_rss_mib()
    load_after = os.getloadavg()
    project, reference = results["project"], results["reference"]

    print_table(list(results.values()), reference, words)
    for device, run in finetune_runs.items():
        print(f"fine-tune ({device}): {run['pairs_per_s']:,.0f} pairs/s")
    print(
        f"corpus: {len(sessions.items):,} sessions, {corpus_tokens:,} tokens x {params.epochs} "
        f"epochs; {sum(c >= MIN_OCCURRENCES for c in counts.values()):,} query items "
        f"(>= {MIN_OCCURRENCES} occurrences); peak RSS {peak_mib:,.0f} MiB "
        f"({rss_before_mib:,.0f} MiB before training); load avg {load_before[0]:.2f} -> "
        f"{load_after[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(
        f"corpus memory (Python heap): streamed {memory['streamed_peak_mib']:.1f} MiB peak, "
        f"as one list {memory['in_memory_list_mib']:.1f} MiB"
    )

    gpu = finetune_runs.get("cuda")
    report = {
        "benchmark": "train",
        "project_words_per_s": words / project.median_s,
        "gensim_words_per_s": words / reference.median_s,
        "words_ratio": reference.median_s / project.median_s,  # >= 0.9: streaming costs <= 10%
        # our own PyTorch trainer (embedding.train.sgns) against gensim, same corpus and knobs
        "torch_words_per_s": words / results["torch_sgns"].median_s,
        "torch_words_ratio": reference.median_s / results["torch_sgns"].median_s,
        "finetune_pairs_per_s_cpu": finetune_runs["cpu"]["pairs_per_s"],
        "finetune_pairs_per_s_gpu": gpu["pairs_per_s"] if gpu else None,
        "finetune": finetune_runs,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "machine": {
            "node": platform.node(),
            "processor": platform.processor(),
            "arch": platform.machine(),
            "cpu_count": os.cpu_count(),
            # 1-min load average around the timed runs: other work on the machine shows here
            "load_avg_1m_before": load_before[0],
            "load_avg_1m_after": load_after[0],
        },
        "versions": {"python": platform.python_version(), "gensim": gensim.__version__},
        "parameters": {
            "events": args.events,
            "days": DAYS,
            "profile": PROFILE,
            "seed": SEED,
            "repeats": args.repeats,
            "sessionize": {
                "gap_minutes": rules.gap_minutes,
                "collapse_repeats": rules.collapse_repeats,
                "min_distinct_items": rules.min_distinct_items,
            },
            "word2vec": params.model_dump(),
            "quality": {"k": K, "min_occurrences": MIN_OCCURRENCES},
        },
        "corpus": {
            "events": sessions.n_events,
            "sessions": len(sessions.items),
            "booked_sessions": sum(sessions.booked),
            "tokens": corpus_tokens,
            "distinct_items": len(counts),
            "query_items": sum(c >= MIN_OCCURRENCES for c in counts.values()),
        },
        "results": {
            r.name: {
                "seconds": r.seconds,
                "median_s": r.median_s,
                "best_s": r.best_s,
                "words_per_s_median": words / r.median_s,
                "words_per_s_best": words / r.best_s,
                "ratio_to_reference_median": r.median_s / reference.median_s,
                "ratio_to_reference_best": r.best_s / reference.best_s,
                "items": r.n_items,
                f"same_cluster_at_{K}": r.same_cluster,
                f"same_cluster_at_{K}_median": statistics.median(r.same_cluster),
            }
            for r in results.values()
        },
        "ratios": {
            "time_median": project.median_s / reference.median_s,
            "time_best": project.best_s / reference.best_s,
            f"same_cluster_at_{K}_median": statistics.median(project.same_cluster)
            / statistics.median(reference.same_cluster),
        },
        "peak_rss_mib": peak_mib,
        "peak_rss_mib_before_training": rss_before_mib,
        "corpus_memory": memory,
    }
    corpus_dir.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
