"""The frozen quality harness (``make bench-quality``): zero-config runs on real logs, scored by
a standalone evaluator on a period the pipeline never saw.

For each log (trivago, yoochoose, globo from ``../shared/data``; the generator's ``standard``
and ``sparse`` profiles) ``bench.frozen_logs`` splits the log once at a cut time (the latest 20% of
sessions by start are held out). For each seed the pipeline runs as a user would run it,
``python -m embedding run --input <input> --publish-root <dir> --set seed=N`` with the default
config (``--source conf/sources/<log>.yaml``, mapping only, where the columns need mapping).
``bench.frozen_eval`` then scores the published Parquet against its own popularity,
co-occurrence and PPMI-SVD baselines on the held-out cases. A run that did not publish scores 0.

Negative control, per log: the evaluator scores the published vectors with their ids shuffled,
and the pipeline's own evaluate and gate stages run on the same run's vectors with shuffled ids
(fresh publish root): the gate must refuse them (exit code 3).

Writes ``bench/results/quality.json``: ``logs.<name>.<method>.{all,covered,novel}.{hr@10,hr@20,
mrr@20,ndcg@10,n}`` (means over seeds), per-seed figures, the control, and ``summary``.

    python -m bench.bench_quality [--seeds 1,2,3] [--logs trivago,yoochoose,globo,standard,sparse]
        [--code DIR]     # another checkout's pipeline (e.g. a worktree of an older commit)
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bench.common import git_commit, git_dirty
from bench.frozen_eval import evaluate, fit_training, make_cases
from bench.frozen_logs import LOGS, REAL_LOGS, LogSpec, write_split
from embedding import PROJECT_ROOT

logger = logging.getLogger("bench.bench_quality")

DEFAULT_OUT = Path("bench/results/quality.json")
METHODS = ("published", "popularity", "cooccurrence", "ppmi_svd", "shuffled_control")
METRICS = ("hr@10", "hr@20", "mrr@20", "ndcg@10", "n")
BENCH_SALT = "frozen-quality-harness-salt"  # a fixed salt: runs are reproducible
MIN_HITS = 10


def run_pipeline(spec: LogSpec, input_file: Path, publish_root: Path, seed: int, code: Path,
                 log_file: Path, overrides: list[str]) -> tuple[int, float]:  # fmt: skip
    """One zero-config CLI run; returns (exit code, seconds)."""
    cmd = [sys.executable, "-m", "embedding", "run", "--input", str(input_file),
           "--publish-root", str(publish_root), "--set", f"seed={seed}"]  # fmt: skip
    for item in overrides:
        cmd += ["--set", item]
    if spec.mapping and (code / spec.mapping).is_file():
        cmd += ["--source", str(code / spec.mapping)]
    env = {**os.environ, "EMBEDDING_USER_SALT": BENCH_SALT, "PYTHONPATH": str(code)}
    started = time.monotonic()
    with log_file.open("w") as handle:
        rc = subprocess.run(
            cmd, cwd=code, env=env, stdout=handle, stderr=subprocess.STDOUT
        ).returncode
    return rc, time.monotonic() - started


def read_published(publish_root: Path) -> tuple[np.ndarray, np.ndarray, dict] | None:
    current = publish_root / "CURRENT"
    if not current.is_file():
        return None
    folder = publish_root / "versions" / current.read_text().strip()
    table = pq.read_table(folder / "item_vectors.parquet", columns=["item_id", "vector"])
    ids = np.array(table.column("item_id").to_pylist(), dtype=object)
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    manifest = json.loads((folder / "manifest.json").read_text())
    return ids, vectors, manifest


def gate_on_shuffled(
    spec: LogSpec, publish_root: Path, manifest: dict, seed: int, overrides: list[str]
) -> dict:
    """The pipeline's evaluate and gate stages on this run's vectors with their ids shuffled."""
    from embedding.core.config import load_config
    from embedding.core.errors import QualityGateError
    from embedding.stages.evaluate import evaluate_stage, gate_stage
    from embedding.stages.plan import RunPlan
    from embedding.stages.results import ColdStart
    from embedding.vectors.parquet_io import read_vectors, write_vectors

    mapping = PROJECT_ROOT / spec.mapping if spec.mapping else None
    cfg = load_config(PROJECT_ROOT / "conf" / "default.yaml", [f"seed={seed}", *overrides],
                      source=mapping)  # fmt: skip
    work = publish_root / ".work"
    src = work / "runs" / manifest["version"]
    control = work / "runs" / f"{manifest['version']}-shuffled"
    shutil.rmtree(control, ignore_errors=True)
    shutil.copytree(src, control)
    rng = np.random.default_rng(seed)
    for name in ("word2vec", "finetuned", "finetuned_triplet"):
        path = control / f"{name}.parquet"
        if path.is_file():
            vectors, _ = read_vectors(path)
            perm = rng.permutation(len(vectors.ids))
            shuffled = type(vectors)(
                [vectors.ids[i] for i in perm], vectors.vectors, vectors.counts
            )
            write_vectors(path, shuffled)
    plan = RunPlan(
        version=manifest["version"], interval_start=manifest["data_interval"]["start"],
        interval_end=manifest["data_interval"]["end"], days=manifest["days"],
        publish_root=str(publish_root / "control-root"), work_dir=str(work),
        run_dir=str(control), already_published=False, input_hashes=manifest["input_hashes"],
    )  # fmt: skip
    evaluation = evaluate_stage(cfg, plan)
    try:
        gate_stage(cfg, plan, evaluation, ColdStart(enabled=False))
        return {"exit_code": 0, "reason": evaluation.gate.reason}
    except QualityGateError as exc:
        return {"exit_code": exc.exit_code, "reason": evaluation.gate.reason}


def mean_over_seeds(per_seed: list[dict]) -> dict:
    out: dict = {}
    for method in METHODS:
        rows = [r[method] for r in per_seed if method in r]
        if not rows:
            continue
        out[method] = {
            part: {m: float(np.mean([r[part][m] for r in rows])) for m in METRICS}
            for part in ("all", "covered", "novel")
        }
    out["coverage"] = float(np.mean([r["coverage"] for r in per_seed]))
    return out


def ratio(means: dict, num: str, den: str, part: str, metric: str) -> float | None:
    """Ratio of means, or None when the denominator has fewer than MIN_HITS hits."""
    top = means.get(num, {}).get(part)
    bottom = means.get(den, {}).get(part)
    if not top or not bottom:
        return None
    cutoff = "hr@10" if metric in ("hr@10", "ndcg@10") else "hr@20"
    if bottom[cutoff] * bottom["n"] < MIN_HITS or bottom[metric] == 0:
        return None
    return top[metric] / bottom[metric]


def ratios(means: dict) -> dict:
    return {
        "hr10_vs_cooc": ratio(means, "published", "cooccurrence", "all", "hr@10"),
        "mrr20_vs_cooc": ratio(means, "published", "cooccurrence", "all", "mrr@20"),
        "hr10_vs_svd": ratio(means, "published", "ppmi_svd", "all", "hr@10"),
        "novel_hr20_vs_svd": ratio(means, "published", "ppmi_svd", "novel", "hr@20"),
        "hr10_vs_popularity": ratio(means, "published", "popularity", "all", "hr@10"),
        "control_hr10_vs_popularity": ratio(means, "shuffled_control", "popularity", "all",
                                            "hr@10"),
    }  # fmt: skip


def run_log(
    name: str, seeds: list[int], code: Path, work: Path, control_gate: bool, overrides: list[str]
) -> dict:
    spec = LOGS[name]
    facts = write_split(spec, work / "splits" / name)
    split = work / "splits" / name
    inputs = pd.read_parquet(split / "input.parquet")
    held = pd.read_parquet(split / "heldout.parquet")
    training = fit_training(inputs, spec)
    cases = make_cases(held, spec, training)
    logger.info("%s: %d cases (%d novel)", name, len(cases.a), int(cases.novel.sum()))
    per_seed, runs = [], []
    for seed in seeds:
        root = work / "runs" / f"{name}-{seed}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        rc, seconds = run_pipeline(spec, split / "input.parquet", root, seed, code,
                                   work / "runs" / f"{name}-{seed}.log", overrides)  # fmt: skip
        published = read_published(root) if rc == 0 else None
        run = {"seed": seed, "exit_code": rc, "seconds": round(seconds, 1),
               "published": published is not None,
               "log": str(work / "runs" / f"{name}-{seed}.log")}  # fmt: skip
        ids, vectors = (published[0], published[1]) if published else (None, None)
        scored = evaluate(ids, vectors, training, cases, seed)
        if published:
            manifest = published[2]
            run["version"] = manifest["version"]
            run["n_items"] = len(ids)
            run["manifest_gate"] = manifest.get("gate", {}).get("reason")
            run["derived"] = manifest.get("word2vec", {}).get("resolved")
            run["pipeline_selected"] = manifest.get("metrics", {}).get("published")
            pipeline_metrics = manifest.get("metrics", {})
            if "impression_rerank" in pipeline_metrics:  # trivago: the pipeline's own re-rank
                run["impression_rerank_mrr"] = {
                    k: v["mrr"] for k, v in pipeline_metrics["impression_rerank"]["methods"].items()
                }
            if "booked_item" in pipeline_metrics:
                run["booked_item_hr@10"] = {
                    k: v["overall"]["hr@10"] for k, v in pipeline_metrics["booked_item"].items()
                }
            if control_gate and seed == seeds[0]:
                run["control_gate"] = gate_on_shuffled(spec, root, manifest, seed, overrides)
        logger.info("%s seed %d: exit %d in %.0f s, published HR@10 %.4f, cooc %.4f, svd %.4f",
                    name, seed, rc, seconds, scored["published"]["all"]["hr@10"],
                    scored["cooccurrence"]["all"]["hr@10"],
                    scored["ppmi_svd"]["all"]["hr@10"])  # fmt: skip
        per_seed.append(scored)
        runs.append(run)
    means = mean_over_seeds(per_seed)
    return {**means, "ratios": ratios(means), "split": facts, "n_cases": len(cases.a),
            "n_novel": int(cases.novel.sum()), "runs": runs, "per_seed": per_seed}  # fmt: skip


def summarise(logs: dict) -> dict:
    real = [logs[n] for n in REAL_LOGS if n in logs]

    def smallest(key: str) -> float | None:
        values = [r["ratios"][key] for r in real]
        return None if not values or any(v is None for v in values) else min(values)

    all_runs = [run for r in logs.values() for run in r["runs"]]
    controls = [run["control_gate"]["exit_code"] for r in logs.values() for run in r["runs"]
                if "control_gate" in run]  # fmt: skip
    return {
        "min_hr10_vs_cooc": smallest("hr10_vs_cooc"),
        "min_mrr20_vs_cooc": smallest("mrr20_vs_cooc"),
        "min_hr10_vs_svd": smallest("hr10_vs_svd"),
        "min_novel_hr20_vs_svd": smallest("novel_hr20_vs_svd"),
        "published": sum(run["published"] for run in all_runs),
        "runs": len(all_runs),
        # shuffled ids rank no better than popularity, on every log (absolute HR@10: the
        # ratio is null where popularity has under 10 hits)
        "control_evaluator_at_or_below_popularity": all(
            r["shuffled_control"]["all"]["hr@10"] <= r["popularity"]["all"]["hr@10"]
            for r in logs.values()
            if "shuffled_control" in r
        ),
        "control_gate_exit_codes": controls,
    }


def print_table(logs: dict) -> None:
    print(f"{'log':<10}{'method':<18}{'HR@10':>8}{'HR@20':>8}{'MRR@20':>8}{'NDCG@10':>9}"
          f"{'cov HR@10':>10}{'novel HR@20':>12}")  # fmt: skip
    for name, result in logs.items():
        for method in METHODS:
            if method in result:
                a, c, n = (result[method][p] for p in ("all", "covered", "novel"))
                print(f"{name:<10}{method:<18}{a['hr@10']:>8.4f}{a['hr@20']:>8.4f}"
                      f"{a['mrr@20']:>8.4f}{a['ndcg@10']:>9.4f}{c['hr@10']:>10.4f}"
                      f"{n['hr@20']:>12.4f}")  # fmt: skip
        r = result["ratios"]
        print("  ratios: " + ", ".join(f"{k} {'null' if v is None else f'{v:.3f}'}"
                                       for k, v in r.items()))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--logs", default=",".join(LOGS))
    parser.add_argument("--code", type=Path, default=PROJECT_ROOT, help="pipeline checkout to run")
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-control-gate", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override passed to every run (experiments: the benchmark's figures "
                        "are the default config's)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    code = args.code.resolve()
    started = time.monotonic()
    logs: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = args.work.resolve() if args.work else Path(tmp)
        for name in args.logs.split(","):
            logs[name] = run_log(
                name,
                seeds,
                code,
                work,
                not args.no_control_gate and code == PROJECT_ROOT,
                args.overrides,
            )
            write_result(args, logs, seeds, code, started, partial=True)
    result = write_result(args, logs, seeds, code, started, partial=False)
    print_table(logs)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out}")
    return 0


def write_result(args, logs: dict, seeds: list[int], code: Path, started: float,
                 partial: bool) -> dict:  # fmt: skip
    """The JSON so far (after each log, so a long run leaves its figures behind)."""
    result = {
        "benchmark": "quality (frozen harness)",
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "code": str(code),
        "seeds": seeds,
        "overrides": args.overrides,
        "seconds": round(time.monotonic() - started, 1),
        "logs": logs,
        "summary": summarise(logs),
        "partial": partial,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
