"""Data-stage wall time: the Spark job ``jobs.sessionize`` against a DuckDB version of it.

Generates one ``standard`` synthetic click log per size (seed 7, 8 days) into a temporary
folder, starts Spark once (``conf/default.yaml`` with ``spark.driver_memory=6g``; the startup is
timed on its own as ``spark_startup_s``), runs one untimed warm-up of each engine on a small log,
then for each size runs, ``--repeats`` times and in alternating order:

- ``spark``: ``run_sessionize(cfg, log, fresh_work_dir)``;
- ``duckdb``: ``bench.duckdb_sessionize.run_duckdb_sessionize`` (the same-run reference of STYLE
  rule 15), with as many threads as Spark's ``local[N]`` master has cores.

Each is timed from the call to its return: first read to last file written, day markers (counts
and content hashes read back from the written files) included. Outputs are compared once per
size: every table partition and the quarantine by ``table_content_hash``, and the result counts.
Reported per size: median seconds of each engine and their ratio (spark / duckdb); overall: the
ratio at the largest size, the Spark startup, the scaling exponent (least-squares slope of
log spark_s over log events) and the peak resident memory of Python plus the JVM (summed over the
process tree, sampled every 0.5 s during the timed runs; DuckDB runs inside the Python process).

Usage::

    python -m bench.bench_data [--events 1000000,3000000,10000000] [--repeats 3]
                               [--out bench/results/data.json]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import git_commit, git_dirty
from bench.duckdb_sessionize import (
    CHECK_OVERRIDES,
    DEFAULT_CONF,
    compare_counts,
    compare_work_dirs,
    run_duckdb_sessionize,
    start_spark,
)
from embedding.core.config import Config, load_config
from embedding.devtools.generate import generate_clicklog

logger = logging.getLogger("bench.bench_data")

SEED = 7
DAYS = 8
PROFILE = "standard"
WARMUP_EVENTS = 20_000
SAMPLE_EVERY_S = 0.5
DEFAULT_EVENTS = "1000000,3000000,10000000"
DEFAULT_OUT = Path("bench/results/data.json")
MIB = 1024 * 1024


class RssSampler:
    """Peak RSS of this process and of it plus its children (the JVM), per phase."""

    def __init__(self, interval_s: float = SAMPLE_EVERY_S) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_tree = self.peak_self = 0  # bytes, since the last reset

    def _sample(self) -> None:
        own = self._process.memory_info().rss
        tree = own
        for child in self._process.children(recursive=True):
            try:
                tree += child.memory_info().rss
            except psutil.Error:  # the child ended between listing and reading
                pass
        with self._lock:
            self.peak_self = max(self.peak_self, own)
            self.peak_tree = max(self.peak_tree, tree)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        with self._lock:
            self.peak_tree = self.peak_self = 0
        self._sample()

    def peaks_mib(self) -> tuple[float, float]:
        """(process tree, this process) peak since the last reset, in MiB."""
        self._sample()
        with self._lock:
            return self.peak_tree / MIB, self.peak_self / MIB


@dataclass
class SizeResult:
    """Timed runs of both engines on one generated log."""

    events: int
    generate_s: float
    spark_runs_s: list[float] = field(default_factory=list)
    duckdb_runs_s: list[float] = field(default_factory=list)
    spark_peak_rss_mib: float = 0.0  # Python + JVM during the Spark runs
    duckdb_peak_rss_mib: float = 0.0  # the Python process (DuckDB inside) during its runs
    outputs_equal: bool | None = None
    mismatches: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    @property
    def spark_s(self) -> float:
        return statistics.median(self.spark_runs_s)

    @property
    def duckdb_s(self) -> float:
        return statistics.median(self.duckdb_runs_s)

    @property
    def ratio(self) -> float:
        return self.spark_s / self.duckdb_s

    def to_dict(self) -> dict:
        return {
            "events": self.events,
            "spark_s": self.spark_s,
            "duckdb_s": self.duckdb_s,
            "ratio": self.ratio,
            "spark_runs_s": self.spark_runs_s,
            "duckdb_runs_s": self.duckdb_runs_s,
            "spark_events_per_s": self.events / self.spark_s,
            "duckdb_events_per_s": self.events / self.duckdb_s,
            "outputs_equal": self.outputs_equal,
            "mismatches": self.mismatches,
            "spark_peak_rss_mb": round(self.spark_peak_rss_mib, 1),
            "duckdb_peak_rss_mb": round(self.duckdb_peak_rss_mib, 1),
            "generate_s": self.generate_s,
            "counts": self.counts,
        }


def spark_cores(master: str) -> int | None:
    """Cores of a ``local[N]`` master (``local[*]``: all CPUs); None for a cluster."""
    if master == "local":
        return 1
    if master.startswith("local[") and master.endswith("]"):
        n = master[len("local[") : -1].split(",")[0]
        return os.cpu_count() if n == "*" else int(n)
    return None


def scaling_exponent(events: Sequence[int], seconds: Sequence[float]) -> float | None:
    """Least-squares slope of log(seconds) over log(events); None with fewer than 2 sizes."""
    import math

    if len(set(events)) < 2:
        return None
    slope, _ = statistics.linear_regression(
        [math.log(e) for e in events], [math.log(s) for s in seconds]
    )
    return slope


def timed(run: Callable[[], dict]) -> tuple[float, dict]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def run_size(
    cfg: Config,
    log_dir: Path,
    scratch: Path,
    size: SizeResult,
    repeats: int,
    duckdb_threads: int | None,
    sampler: RssSampler,
) -> None:
    """Time both engines ``repeats`` times on one log; compare the first runs' outputs."""
    from jobs.sessionize import run_sessionize

    engines: dict[str, Callable[[Path], dict]] = {
        "spark": lambda work: run_sessionize(cfg, log_dir, work).to_dict(),
        "duckdb": lambda work: run_duckdb_sessionize(cfg, log_dir, work, duckdb_threads),
    }
    for repeat in range(repeats):
        order = list(engines) if repeat % 2 == 0 else list(reversed(engines))  # spread drift
        work_dirs: dict[str, Path] = {}
        results: dict[str, dict] = {}
        for name in order:
            work = scratch / f"{name}-{size.events}-{repeat}"
            shutil.rmtree(work, ignore_errors=True)
            gc.collect()
            sampler.reset()
            seconds, results[name] = timed(lambda work=work, name=name: engines[name](work))
            tree_mib, self_mib = sampler.peaks_mib()
            if name == "spark":
                size.spark_runs_s.append(seconds)
                size.spark_peak_rss_mib = max(size.spark_peak_rss_mib, tree_mib)
            else:
                size.duckdb_runs_s.append(seconds)
                size.duckdb_peak_rss_mib = max(size.duckdb_peak_rss_mib, self_mib)
            logger.info(
                "%d events, repeat %d/%d, %s: %.2f s (peak RSS %.0f MiB with the JVM, "
                "%.0f MiB Python)",
                size.events,
                repeat + 1,
                repeats,
                name,
                seconds,
                tree_mib,
                self_mib,
            )
            work_dirs[name] = work
        if repeat == 0:
            check_outputs(size, work_dirs["spark"], work_dirs["duckdb"], results)
        for work in work_dirs.values():
            shutil.rmtree(work, ignore_errors=True)


def check_outputs(size: SizeResult, spark_dir: Path, duck_dir: Path, results: dict) -> None:
    started = time.perf_counter()
    checks = compare_work_dirs(spark_dir, duck_dir, results["spark"]["days"])
    size.mismatches = [
        f"{c.table} {c.day}: {c.rows_a} vs {c.rows_b} rows; {c.detail}"
        for c in checks
        if not c.equal
    ]
    size.mismatches += [
        f"count {key}: spark {a} duckdb {b}"
        for key, (a, b) in compare_counts(results["spark"], results["duckdb"]).items()
    ]
    size.outputs_equal = not size.mismatches
    spark = results["spark"]
    size.counts = {
        k: spark[k]
        for k in ("rows_read", "events_valid", "sessions", "conversions", "booking_pairs")
    }
    log = logger.info if size.outputs_equal else logger.error
    log(
        "%d events: outputs %s (%d partitions compared in %.1f s)%s",
        size.events,
        "equal" if size.outputs_equal else "DIFFER",
        len(checks),
        time.perf_counter() - started,
        "".join(f"\n  {m}" for m in size.mismatches),
    )


def warm_up(cfg: Config, scratch: Path, duckdb_threads: int | None) -> dict[str, float]:
    """One untimed run of each engine on a small log (JIT, caches, first-use costs)."""
    from jobs.sessionize import run_sessionize

    log_dir = scratch / "clicks-warmup"
    generate_clicklog(log_dir, events=WARMUP_EVENTS, days=DAYS, profile=PROFILE, seed=SEED)
    spark_s, _ = timed(lambda: run_sessionize(cfg, log_dir, scratch / "warm-spark").to_dict())
    duck_s, _ = timed(
        lambda: run_duckdb_sessionize(cfg, log_dir, scratch / "warm-duckdb", duckdb_threads)
    )
    for folder in ("clicks-warmup", "warm-spark", "warm-duckdb"):
        shutil.rmtree(scratch / folder, ignore_errors=True)
    logger.info("warm-up on %d events: spark %.1f s, duckdb %.1f s", WARMUP_EVENTS, spark_s, duck_s)
    return {"events": WARMUP_EVENTS, "spark_s": spark_s, "duckdb_s": duck_s}


def print_table(sizes: Sequence[SizeResult], startup_s: float, exponent: float | None) -> None:
    header = (
        f"{'events':>11} {'spark s':>9} {'duckdb s':>9} {'spark/duckdb':>12} "
        f"{'spark ev/s':>11} {'duckdb ev/s':>12} {'RSS MiB':>8} {'equal':>6}"
    )
    print(header)
    print("-" * len(header))
    for s in sizes:
        print(
            f"{s.events:>11,} {s.spark_s:>9.2f} {s.duckdb_s:>9.2f} {s.ratio:>12.1f} "
            f"{s.events / s.spark_s:>11,.0f} {s.events / s.duckdb_s:>12,.0f} "
            f"{s.spark_peak_rss_mib:>8,.0f} {s.outputs_equal!s:>6}"
        )
    slope = "n/a" if exponent is None else f"{exponent:.2f}"
    print(
        f"spark startup {startup_s:.1f} s (not in the times above); spark scaling exponent "
        f"{slope}; RSS: peak of Python + JVM during the Spark runs"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", default=DEFAULT_EVENTS, help="comma-separated log sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine and size")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument("--conf", type=Path, default=DEFAULT_CONF)
    parser.add_argument(
        "--duckdb-threads", type=int, default=None, help="default: the cores of Spark's master"
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where logs and outputs go")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(e.replace("_", "")) for e in args.events.split(",") if e})
    except ValueError:
        parser.error(f"--events: expected comma-separated whole numbers, got {args.events!r}")
    if not args.sizes or min(args.sizes) < 1 or args.repeats < 1:
        parser.error("--events and --repeats must be >= 1")
    return args


BENCH_SALT = "bench-data-fixed-user-id-salt"  # keyed hashing on, as in production


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    import duckdb
    import pyarrow
    import pyspark

    cfg = load_config(args.conf, CHECK_OVERRIDES)
    # one salt for both engines (else each work folder makes its own and the ids differ)
    os.environ.setdefault(cfg.sessionize.salt_env, BENCH_SALT)
    threads = args.duckdb_threads or spark_cores(cfg.spark.master)
    if args.tmp_dir:
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
    sizes: list[SizeResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-data-", dir=args.tmp_dir) as tmp,
        RssSampler() as sampler,
    ):
        scratch = Path(tmp)
        logs: dict[int, Path] = {}
        for events in args.sizes:
            logger.info("generating %d events (%s, seed %d, %d days)", events, PROFILE, SEED, DAYS)
            started = time.perf_counter()
            logs[events] = scratch / f"clicks-{events}"
            generate_clicklog(logs[events], events=events, days=DAYS, profile=PROFILE, seed=SEED)
            sizes.append(SizeResult(events, generate_s=time.perf_counter() - started))

        started = time.perf_counter()
        spark = start_spark(cfg)
        spark.range(1000).selectExpr("sum(id)").collect()
        startup_s = time.perf_counter() - started
        java = spark.sparkContext._jvm.System.getProperty("java.version")
        logger.info("spark started in %.1f s (%s, driver %s)", startup_s, cfg.spark.master, java)
        warmup = None if args.no_warmup else warm_up(cfg, scratch, threads)

        load_before = os.getloadavg()
        for size in sizes:
            run_size(cfg, logs[size.events], scratch, size, args.repeats, threads, sampler)
        load_after = os.getloadavg()
        peak_tree_mib = max(s.spark_peak_rss_mib for s in sizes)

    exponent = scaling_exponent([s.events for s in sizes], [s.spark_s for s in sizes])
    duck_exponent = scaling_exponent([s.events for s in sizes], [s.duckdb_s for s in sizes])
    print_table(sizes, startup_s, exponent)
    largest = sizes[-1]
    report = {
        "benchmark": "data",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "machine": {
            "node": platform.node(),
            "processor": platform.processor(),
            "arch": platform.machine(),
            "cpu_count": os.cpu_count(),
            "memory_total_mb": round(psutil.virtual_memory().total / MIB),
            # 1-min load average around the timed runs: other work on the machine shows here
            "load_avg_1m_before": load_before[0],
            "load_avg_1m_after": load_after[0],
        },
        "versions": {
            "python": platform.python_version(),
            "pyspark": pyspark.__version__,
            "java": java,
            "duckdb": duckdb.__version__,
            "pyarrow": pyarrow.__version__,
        },
        "parameters": {
            "events": args.sizes,
            "days": DAYS,
            "profile": PROFILE,
            "seed": SEED,
            "repeats": args.repeats,
            "conf": str(args.conf),
            "spark": cfg.spark.model_dump(),
            "duckdb_threads": threads,
            "sessionize": cfg.sessionize.model_dump(),
            "warmup": warmup,
        },
        "spark_startup_s": startup_s,
        "sizes": [s.to_dict() for s in sizes],
        "ratio_vs_duckdb": largest.ratio,
        "ratio_vs_duckdb_events": largest.events,
        "scaling_exponent": exponent,
        "duckdb_scaling_exponent": duck_exponent,
        "peak_rss_mb": round(peak_tree_mib, 1),
        "outputs_equal": all(s.outputs_equal for s in sizes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", args.out)
    if not report["outputs_equal"]:
        logger.error("Spark and DuckDB outputs differ; see 'mismatches' in %s", args.out)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
