"""Chaos benchmark: SIGKILL the pipeline at named points, rerun, compare with an undisturbed run.

On a generated log (with an item table, so cold start runs) and ``word2vec.workers=1``, each
fault is: a fresh work folder and publish root; a run with ``EMBEDDING_KILL_AT=<point>``
(``embedding.core.chaos``: the process group SIGKILLs itself there); a rerun without it; then the
state is compared with an undisturbed run's: ``CURRENT``, the version ids (published and
rejected), the day markers, each version's vectors content hash (rows sorted), its ANN index
bytes, every version verifying against its manifest, and nothing left in ``.tmp``,
``.staging``, ``dt=*.old`` or ``.*.tmp``. Faults run through the CLI (``python -m embedding
run``) and through ``airflow dags test``. Two CLI runs started together on the same roots
(``--wait``) must end in one run's state.

    python -m bench.bench_chaos                    # every point, CLI and DAG -> chaos.json
    python -m bench.bench_chaos --cli-points publish.before_rename --dag-points none

Writes ``bench/results/chaos.json``: ``faults`` (each point with its outcome), ``n_faults``,
``mismatches``, ``leftovers``, ``concurrent_ok``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from bench.common import git_commit, git_dirty
from embedding import PROJECT_ROOT
from embedding.core.chaos import ENV, POINTS
from embedding.core.checksum import table_content_hash

logger = logging.getLogger("bench.bench_chaos")

DEFAULT_OUT = Path("bench/results/chaos.json")
# points of a DAG run: one in each task that does work, and the publish steps around the renames
DAG_POINTS = (
    "sessionize.staged",
    "train.epoch",
    "finetune.epoch",
    "evaluate.scored",
    "publish.index",
    "publish.before_rename",
    "publish.before_current",
)
SALT = "chaos-bench-salt-not-a-secret"
START = datetime.date(2026, 1, 1)


@dataclass(frozen=True)
class Setup:
    tmp: Path
    log: Path
    items: Path
    env: dict[str, str]
    airflow_home: Path
    run_date: str


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(ENV, None)
    env.update(
        {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYTHONHASHSEED": "0",
            "HNSWLIB_NO_NATIVE": "1",
            "EMBEDDING_USER_SALT": SALT,
            "AIRFLOW_HOME": str(tmp / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "EMBEDDING_RETRIES": "0",
        }
    )
    return env


def prepare(tmp: Path, events: int, days: int, with_dag: bool) -> Setup:
    """Generate the log and its item table; migrate a fresh Airflow DB when DAG faults run."""
    env = _env(tmp)
    log = tmp / "clicks"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "embedding",
            "-q",
            "generate",
            "--out",
            str(log),
            "--events",
            str(events),
            "--days",
            str(days),
            "--profile",
            "standard",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
    )
    truth = pq.read_table(log / "_ground_truth.parquet")
    items = tmp / "items.parquet"
    pq.write_table(truth.select(["item_id", "market", "cluster"]), items)
    home = tmp / "airflow"
    if with_dag:
        home.mkdir()
        with (tmp / "migrate.log").open("w") as out:
            subprocess.run(
                [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                env=env,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=out,
                check=True,
            )
    run_date = (START + datetime.timedelta(days=days)).isoformat()  # the generator's start
    return Setup(tmp, log, items, env, home, run_date)


def _conf(setup: Setup, case: Path) -> Path:
    conf = yaml.safe_load((PROJECT_ROOT / "conf" / "default.yaml").read_text())
    conf["paths"] = {
        "input": str(setup.log),
        "items": str(setup.items),
        "publish_root": str(case / "publish"),
        "work_dir": str(case / "work"),
    }
    conf.setdefault("word2vec", {})["workers"] = 1
    path = case / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _command(setup: Setup, case: Path, via: str, wait_s: float | None = None) -> list[str]:
    if via == "dag":
        airflow = str(Path(sys.executable).parent / "airflow")
        return [airflow, "dags", "test", "item_embeddings", setup.run_date]
    command = [
        sys.executable,
        "-m",
        "embedding",
        "run",
        "--conf",
        str(case / "conf.yaml"),
        "--input",
        str(setup.log),
        "--items",
        str(setup.items),
        "--publish-root",
        str(case / "publish"),
        "--work-dir",
        str(case / "work"),
    ]
    return command + ([] if wait_s is None else ["--wait", str(wait_s)])


def launch(
    setup: Setup, case: Path, via: str, log_name: str, kill_at: str | None = None, **kw: Any
) -> subprocess.Popen:
    env = dict(setup.env)
    env["EMBEDDING_CONF"] = str(case / "conf.yaml")
    if kill_at is not None:
        env[ENV] = kill_at
    out = (case / log_name).open("w")
    return subprocess.Popen(
        _command(setup, case, via, **kw),
        env=env,
        cwd=PROJECT_ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: the kill stops there
    )


def run(setup: Setup, case: Path, via: str, log_name: str, kill_at: str | None = None) -> int:
    process = launch(setup, case, via, log_name, kill_at)
    try:
        return process.wait(timeout=1800)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a JVM left behind by the group


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(case: Path) -> dict[str, Any]:
    """What a run leaves that readers depend on, compared across runs."""
    from embedding.core.errors import PublishError
    from embedding.vectors.publish import verify_version

    root, work = case / "publish", case / "work"
    current = root / "CURRENT"
    versions: dict[str, Any] = {}
    for folder in sorted((root / "versions").iterdir()) if (root / "versions").is_dir() else []:
        entry: dict[str, Any] = {}
        try:
            verify_version(folder)
            entry["verifies"] = True
        except PublishError as exc:
            entry["verifies"] = str(exc)
        vectors = folder / "item_vectors.parquet"
        if vectors.is_file():
            entry["vectors_hash"] = table_content_hash([pq.read_table(vectors)], ["item_id"])
        index = folder / "ann_index.hnsw"
        entry["index_sha256"] = _sha256(index) if index.is_file() else None
        versions[folder.name] = entry
    rejected = sorted(p.name for p in (root / "rejected").glob("*")) if root.exists() else []
    markers = {p.stem: json.loads(p.read_text()) for p in sorted((work / "_days").glob("*.json"))}
    return {
        "current": current.read_text().strip() if current.is_file() else None,
        "versions": versions,
        "rejected": rejected,
        "day_markers": markers,
    }


def leftovers(case: Path) -> list[str]:
    """Scratch a finished run must not leave: staging, half-deleted days, temp files, leases."""
    root, work = case / "publish", case / "work"
    found = [p for p in (root / ".tmp").glob("*")] if (root / ".tmp").is_dir() else []
    found += [p for p in (work / ".staging").glob("*")] if (work / ".staging").is_dir() else []
    found += list(work.glob("*/dt=*.old"))
    found += [p for p in case.rglob(".*.tmp")]
    found += [p for p in (root / ".lease.json", work / ".lease.json") if p.exists()]
    return sorted(str(p.relative_to(case)) for p in found)


def differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    diffs = []
    for key in ("current", "rejected", "day_markers"):
        if expected[key] != got[key]:
            diffs.append(f"{key}: {got[key]!r} != {expected[key]!r}"[:300])
    if sorted(expected["versions"]) != sorted(got["versions"]):
        diffs.append(f"version ids {sorted(got['versions'])} != {sorted(expected['versions'])}")
    for name, entry in got["versions"].items():
        if entry["verifies"] is not True:
            diffs.append(f"{name} does not verify: {entry['verifies']}"[:300])
        want = expected["versions"].get(name)
        if want is None:
            continue
        for key in ("vectors_hash", "index_sha256"):
            if entry.get(key) != want.get(key):
                diffs.append(f"{name} {key} differs")
    return diffs


def fault_case(setup: Setup, via: str, point: str, baseline: dict[str, Any]) -> dict[str, Any]:
    case = setup.tmp / f"{via}-{point}"
    case.mkdir()
    _conf(setup, case)
    started = time.perf_counter()
    killed = run(setup, case, via, "killed.log", kill_at=point)
    reached = killed in (-signal.SIGKILL, 128 + signal.SIGKILL)
    rerun = run(setup, case, via, "rerun.log")
    state = snapshot(case)
    diffs = differences(baseline, state)
    left = leftovers(case)
    outcome = {
        "via": via,
        "point": point,
        "killed": reached,
        "kill_exit": killed,
        "rerun_exit": rerun,
        "mismatches": diffs + ([] if rerun == 0 else [f"rerun exited {rerun}"]),
        "leftovers": left,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not reached:
        outcome["mismatches"].append(f"the point was not reached (exit {killed})")
    logger.info(
        "%s %-26s killed=%s rerun=%d mismatches=%d leftovers=%d (%.0f s)",
        via,
        point,
        reached,
        rerun,
        len(outcome["mismatches"]),
        len(left),
        outcome["seconds"],
    )
    if outcome["mismatches"] or left:
        logger.warning("  %s", outcome["mismatches"] + left)
    else:
        shutil.rmtree(case, ignore_errors=True)
    return outcome


def baseline_case(setup: Setup, via: str) -> dict[str, Any]:
    case = setup.tmp / f"{via}-undisturbed"
    case.mkdir()
    _conf(setup, case)
    started = time.perf_counter()
    code = run(setup, case, via, "run.log")
    if code != 0:
        tail = "\n".join((case / "run.log").read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the undisturbed {via} run failed ({code}):\n{tail}")
    state = snapshot(case)
    logger.info(
        "undisturbed %s run: %.0f s, CURRENT %s",
        via,
        time.perf_counter() - started,
        state["current"],
    )
    if left := leftovers(case):
        raise RuntimeError(f"the undisturbed {via} run left {left}")
    return state


def concurrent_case(setup: Setup, baseline: dict[str, Any]) -> dict[str, Any]:
    """Two CLI runs started together on the same roots: the second waits for the first."""
    case = setup.tmp / "cli-concurrent"
    case.mkdir()
    _conf(setup, case)
    first = launch(setup, case, "cli", "first.log", wait_s=1800)
    second = launch(setup, case, "cli", "second.log", wait_s=1800)
    codes = [first.wait(timeout=3600), second.wait(timeout=3600)]
    diffs = differences(baseline, snapshot(case))
    left = leftovers(case)
    logs = (case / "first.log").read_text() + (case / "second.log").read_text()
    result = {
        "exits": codes,
        "waited": "waits (up to" in logs,
        "mismatches": diffs,
        "leftovers": left,
        "ok": codes == [0, 0] and not diffs and not left,
    }
    logger.info("concurrent: %s", result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--cli-points", default="all", help="comma-separated, 'all' or 'none'")
    parser.add_argument("--dag-points", default=",".join(DAG_POINTS))
    parser.add_argument("--no-concurrent", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def points(text: str) -> list[str]:
        chosen = list(POINTS) if text == "all" else [] if text == "none" else text.split(",")
        if unknown := sorted(set(chosen) - set(POINTS)):
            parser.error(f"unknown points {unknown}; known: {', '.join(POINTS)}")
        return chosen

    cli_points, dag_points = points(args.cli_points), points(args.dag_points)
    tmp = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    started = time.perf_counter()
    try:
        setup = prepare(tmp, args.events, args.days, with_dag=bool(dag_points))
        faults: list[dict[str, Any]] = []
        concurrent = None
        if cli_points or not args.no_concurrent:
            cli_base = baseline_case(setup, "cli")
            faults += [fault_case(setup, "cli", p, cli_base) for p in cli_points]
            if not args.no_concurrent:
                concurrent = concurrent_case(setup, cli_base)
        if dag_points:
            dag_base = baseline_case(setup, "dag")
            faults += [fault_case(setup, "dag", p, dag_base) for p in dag_points]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            logger.info("scratch kept in %s", tmp)
    report = {
        "benchmark": "chaos",
        "commit": git_commit(),
        "dirty": git_dirty(),
        "events": args.events,
        "days": args.days,
        "faults": faults,
        "n_faults": len(faults),
        "mismatches": sum(len(f["mismatches"]) for f in faults),
        "leftovers": sum(len(f["leftovers"]) for f in faults),
        "concurrent": concurrent,
        "concurrent_ok": None if concurrent is None else concurrent["ok"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    clean = report["mismatches"] == 0 and report["leftovers"] == 0
    return 0 if clean and report["concurrent_ok"] is not False else 1


def print_table(report: dict[str, Any]) -> None:
    print(f"{'via':4} {'point':26} {'killed':>6} {'rerun':>5} {'mismatch':>8} {'left':>4} {'s':>6}")
    for f in report["faults"]:
        print(
            f"{f['via']:4} {f['point']:26} {f['killed']!s:>6} {f['rerun_exit']:>5} "
            f"{len(f['mismatches']):>8} {len(f['leftovers']):>4} {f['seconds']:>6.0f}"
        )
    print(
        f"n_faults {report['n_faults']}, mismatches {report['mismatches']}, leftovers "
        f"{report['leftovers']}, concurrent_ok {report['concurrent_ok']}, "
        f"{report['seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    sys.exit(main())
