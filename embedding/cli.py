"""Command line: ``python -m embedding {generate,run,versions,rollback,neighbors,report,sweep}``
(CONTRACTS §3).

Exit codes: 0 published (or already published); 2 bad input or configuration (one clear line on
stderr); 3 quality gate failed; 1 anything else. CURRENT is unchanged on any non-zero exit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from embedding.core.errors import EmbeddingError, InputError, PublishError

if TYPE_CHECKING:
    from embedding.core.config import Config

logger = logging.getLogger("embedding")


def _add_wait_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait this long for another writer of the same folders to finish (default: "
        "$EMBEDDING_LOCK_WAIT_S, else 0: stop at once, naming it)",
    )


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--conf", type=Path, default=None, help="YAML config (default: conf/default.yaml)"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="mapping-only YAML (the source section alone, e.g. conf/sources/trivago.yaml) "
        "layered over the config",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set word2vec.epochs=5 (repeatable)",
    )


def _load(args: argparse.Namespace):
    from embedding import PROJECT_ROOT
    from embedding.core.config import load_config

    conf = args.conf if args.conf is not None else PROJECT_ROOT / "conf" / "default.yaml"
    return load_config(conf, args.overrides, source=getattr(args, "source", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m embedding", description=__doc__.split("\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a synthetic click log with planted clusters")
    gen.add_argument("--out", type=Path, required=True, help="folder to create")
    gen.add_argument("--events", type=int, default=200_000)
    gen.add_argument("--days", type=int, default=8)
    gen.add_argument("--profile", default="standard", help="standard | sparse")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--start", type=datetime.date.fromisoformat, default=datetime.date(2026, 1, 1))

    run = sub.add_parser("run", help="validate, sessionize, train, fine-tune, evaluate, publish")
    run.add_argument("--input", type=Path, required=True, help="click-log file or folder")
    run.add_argument("--publish-root", type=Path, required=True)
    run.add_argument("--work-dir", type=Path, default=None, help="default <publish-root>/.work")
    run.add_argument("--items", type=Path, default=None, help="item table (CONTRACTS §1b)")
    _add_config_args(run)
    _add_wait_arg(run)

    ver = sub.add_parser("versions", help="list published versions with metrics and gate result")
    ver.add_argument("--publish-root", type=Path, default=None)
    ver.add_argument("--last-run", action="store_true", help="also say what the latest run did")
    _add_config_args(ver)

    rb = sub.add_parser(
        "rollback", help="point CURRENT back at a published version and pin it there"
    )
    rb.add_argument("version", help="a published version id, e.g. 20260108-1a2b3c4d")
    rb.add_argument("--publish-root", type=Path, default=None)
    _add_config_args(rb)
    _add_wait_arg(rb)

    rep = sub.add_parser("report", help="write a published version's HTML report to a file")
    rep.add_argument("--version", default=None, help="default: CURRENT")
    rep.add_argument("--out", type=Path, required=True, help="HTML file to write")
    rep.add_argument("--publish-root", type=Path, default=None)
    _add_config_args(rep)

    sw = sub.add_parser("sweep", help="rank skip-gram knob settings on the validation split")
    sw.add_argument("--grid", type=Path, required=True, help="sweep grid YAML (conf/sweep.yaml)")
    sw.add_argument("--input", type=Path, default=None, help="default: paths.input")
    sw.add_argument("--items", type=Path, default=None, help="item table (CONTRACTS §1b)")
    sw.add_argument("--publish-root", type=Path, default=None)
    sw.add_argument("--work-dir", type=Path, default=None, help="default <publish-root>/.work")
    sw.add_argument("--out", type=Path, default=None, help="default <work-dir>/sweeps/<time>")
    sw.add_argument("--score-test", action="store_true",
                    help="also record test-split figures (never used to rank)")  # fmt: skip
    _add_config_args(sw)
    _add_wait_arg(sw)

    nb = sub.add_parser("neighbors", help="print the nearest items of one item (exact cosine)")
    nb.add_argument("item_id")
    nb.add_argument("--publish-root", type=Path, default=None)
    nb.add_argument("--version", default=None, help="default: CURRENT")
    nb.add_argument("--k", type=int, default=10)
    nb.add_argument("--market", default=None, help="only neighbours of this market")
    _add_config_args(nb)

    st = sub.add_parser(
        "stage", help="run one heavy stage of a planned run in this process (used by the DAG)"
    )
    st.add_argument("name", choices=["train", "finetune"])
    st.add_argument("--plan", type=Path, required=True, help="the run plan JSON (RunPlan)")
    _add_config_args(st)
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from embedding.devtools.generate import generate_clicklog

    result = generate_clicklog(
        args.out, args.events, args.days, args.profile, args.seed, args.start
    )
    print(
        f"generated {result.n_events} events, {result.n_sessions} sessions "
        f"({result.n_booked_sessions} booked), {result.n_items} items over {len(result.days)} days "
        f"-> {result.out_dir}"
    )
    return 0


def format_metrics(metrics: dict) -> list[str]:
    lines = [
        f"holdout: {metrics.get('holdout')}, {metrics.get('n_cases')} next-item cases, "
        f"coverage {metrics.get('coverage', 0):.1%}"
    ]
    lines.append(f"  {'method':<19}{'HR@10':>8}{'MRR@20':>8}{'NDCG@10':>9}   covered HR@10")
    variants = sorted(k for k in metrics if k.startswith("finetuned_"))
    for name in (*metrics.get("baselines", ["popularity"]), "word2vec", "finetuned", *variants):
        if name in metrics:
            m = metrics[name]
            lines.append(
                f"  {name:<19}{m['hr@10']:>8.4f}{m['mrr@20']:>8.4f}{m.get('ndcg@10', 0.0):>9.4f}"
                f"   {m['covered']['hr@10']:.4f}"
            )
    booked = metrics.get("booked_item", {})
    if booked:
        lines.append("booked-item HR@10 (Airbnb protocol, all clicks of booked test sessions):")
        lines.extend(f"  {k:<22}{v['overall']['hr@10']:.4f}" for k, v in booked.items())
    selection = metrics.get("selection")
    if selection:
        scores = ", ".join(
            f"{k} {v[selection['metric']]:.4f}" for k, v in selection["scores"].items()
        )
        lines.append(
            f"published: {selection['chosen']} (validation {selection['metric']}: {scores})"
        )
    rerank = metrics.get("impression_rerank")
    if rerank:
        lines.append(f"impression re-rank on {rerank['n_cases']} clickouts (MRR):")
        lines.extend(f"  {k:<28}{v['mrr']:.4f}" for k, v in rerank["methods"].items())
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    from embedding.stages.pipeline import run_pipeline
    from embedding.stages.plan import resolve_paths, writer_lock

    cfg = _load(args)
    if not args.input.exists():
        raise InputError(f"{args.input}: input not found")
    if args.items and not args.items.exists():
        raise InputError(f"{args.items}: item table not found")
    paths = resolve_paths(cfg, args.input, args.publish_root, args.work_dir, args.items)
    with writer_lock(paths, "python -m embedding run", wait_s=args.wait):
        result = run_pipeline(cfg, paths)
    pub, ingest, gate = result.published, result.ingest, result.evaluation.gate
    state = "already published" if pub.already_published else "published"
    print(f"{state}: {pub.version} -> {pub.path}")
    print(f"CURRENT: {pub.current}")
    print(
        f"input: {ingest.rows_read} rows, {ingest.events_valid} item events, "
        f"dropped {sum(ingest.dropped_by_type.values())} {ingest.dropped_by_type}, "
        f"quarantined {sum(ingest.quarantined_by_reason.values())} "
        f"{ingest.quarantined_by_reason}; {ingest.sessions} sessions, "
        f"{ingest.booking_pairs} booking pairs"
    )
    if ingest.item_table:
        table = ingest.item_table
        print(
            f"item table: {table['rows_read']} rows, {table['items']} items, "
            f"{table['duplicates']} duplicates, quarantined {table['quarantined_by_reason']}"
        )
    for line in format_metrics(result.metrics):
        print(line)
    print(f"gate: {'passed' if gate.passed else 'failed'}: {gate.reason}")
    return 0


def _day(version: str) -> str:
    day = version.split("-", 1)[0]
    return f"{day[:4]}-{day[4:6]}-{day[6:]}" if len(day) == 8 and day.isdigit() else day


def _gate_summary(gate: dict) -> str:
    if not gate:
        return "gate -"
    value = gate.get("value")
    figure = f"{value:.4f}" if isinstance(value, int | float) else "-"
    required = gate.get("required")
    need = f" (needs {required:.4f})" if isinstance(required, int | float) else ""
    verdict = "passed" if gate.get("passed") else "failed"
    return f"{gate.get('metric', 'gate')} {figure}{need} {verdict}"


def cmd_versions(args: argparse.Namespace) -> int:
    from embedding.stages.plan import resolve_paths
    from embedding.stages.publish import LAST_PUBLISH
    from embedding.vectors.publish import REJECTED, read_pin, version_names
    from embedding.vectors.versions import MANIFEST, VERSIONS, current_or_none

    cfg = _load(args)
    root = args.publish_root or cfg.paths.resolve(cfg.paths.publish_root)
    current = current_or_none(root)
    try:
        pin = read_pin(root)
    except PublishError as exc:  # list anyway; say why the pin cannot be read
        print(f"warning: {exc}")
        pin = None
    if args.last_run:
        last = Path(resolve_paths(cfg, input_path=".", publish_root=root).work_dir) / LAST_PUBLISH
        if not last.is_file():
            raise InputError(f"{root}: no run has published here yet")
        outcome = json.loads(last.read_text())
        state = (
            "was already published (same inputs, config and code)"
            if outcome["already_published"]
            else "published by this run"
        )
        print(f"version {outcome['version']} {state}; CURRENT = {outcome['current']}")
    rows = []
    for kind in (VERSIONS, REJECTED):
        for name in version_names(root, kind):
            path = root / kind / name / MANIFEST
            try:
                manifest = json.loads(path.read_text()) if path.is_file() else None
            except ValueError:
                manifest = None
            rows.append((kind, name, manifest))
    if not rows:
        raise InputError(f"{root}: no versions published yet")
    width = max(len(name) for _, name, _ in rows)
    print(f"versions under {root} (* = CURRENT, P = pinned by rollback):")
    for kind, name, manifest in rows:
        mark = ("*" if kind == VERSIONS and name == current else " ") + (
            "P" if kind == VERSIONS and pin is not None and name == pin["version"] else " "
        )
        state = "published" if kind == VERSIONS else "rejected"
        if manifest is None:
            print(f"{mark} {name:<{width}}  {_day(name)}  {state:<9}  incomplete: no {MANIFEST}")
            continue
        gate = manifest.get("gate") or {}
        line = (
            f"{mark} {name:<{width}}  {_day(name)}  {state:<9}  "
            f"{manifest.get('n_items', '?'):>7} items  dim {manifest.get('dim', '?')}  "
            f"{_gate_summary(gate)}"
        )
        if kind == REJECTED and gate.get("reason"):
            line += f": {gate['reason']}"
        print(line)
    if current is None:
        print("CURRENT: none")
    elif not (root / VERSIONS / current).is_dir():
        print(f"CURRENT: {current} (warning: no such folder under {root / VERSIONS})")
    if pin is not None:
        print(
            f"pinned: CURRENT held at {pin['version']} by a rollback at {pin['pinned_at']} "
            f"(was {pin.get('previous_current')}); the next version trained after "
            f"{_day(pin['newest_at_pin'])} moves it and lifts the pin"
        )
    manifest = next((m for k, n, m in rows if n == current and k == VERSIONS and m), None)
    if manifest is not None:
        print(f"CURRENT {current}: created {manifest.get('created_at')}")
        for line in format_metrics(manifest.get("metrics", {})):
            print(line)
        print(f"gate: {manifest.get('gate', {}).get('reason')}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from embedding.core.lock import exclusive
    from embedding.vectors.publish import rollback

    cfg = _load(args)
    root = args.publish_root or cfg.paths.resolve(cfg.paths.publish_root)
    with exclusive([root], "python -m embedding rollback", wait_s=args.wait):
        result = rollback(root, args.version)
    print(f"CURRENT was {result.previous_current}, now {result.version}")
    print(
        f"pinned at {result.pinned_at}: publishing or rerunning a version trained on or before "
        f"{_day(result.newest_at_pin)} leaves CURRENT here; the next version trained after "
        "that day moves it forward and lifts the pin"
    )
    return 0


def _chosen_version(args: argparse.Namespace) -> tuple[Config, str, Path]:
    """The config, the version (``--version`` or CURRENT) and its folder under the publish root."""
    from embedding.vectors.versions import VERSIONS, current_or_none, is_folder_name

    cfg = _load(args)
    root = args.publish_root or cfg.paths.resolve(cfg.paths.publish_root)
    version = args.version or current_or_none(root)
    if version is None:
        raise InputError(f"{root}: no CURRENT version; publish one first or pass --version")
    if not is_folder_name(version):  # never let an id reach the file system as a path
        raise InputError(f"{version!r} is not a version id (expected e.g. 20260108-1a2b3c4d)")
    return cfg, version, root / VERSIONS / version


def cmd_neighbors(args: argparse.Namespace) -> int:
    import numpy as np

    from embedding.vectors.parquet_io import VECTORS_FILE, read_vectors
    from embedding.vectors.versions import verify_version

    _, version, folder = _chosen_version(args)
    verify_version(folder)
    vectors, markets = read_vectors(folder / VECTORS_FILE)
    index = vectors.index()
    if args.item_id not in index:
        raise InputError(f"unknown item_id {args.item_id!r} in version {version}")
    if args.k < 1:
        raise InputError(f"--k must be at least 1, got {args.k}")
    row = index[args.item_id]
    scores = vectors.vectors @ vectors.vectors[row]
    scores[row] = -np.inf
    allowed = np.ones(len(vectors.ids), dtype=bool)
    allowed[row] = False
    scope = ""
    if args.market is not None:
        in_market = np.array([markets.get(i) == args.market for i in vectors.ids], dtype=bool)
        if not in_market.any():
            known = sorted({m for m in markets.values() if m is not None})
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            raise InputError(
                f"no item of market {args.market!r} in version {version} "
                f"({len(known)} markets: {shown or 'none recorded'})"
            )
        allowed &= in_market
        scope = f", market {args.market} only"
    candidates = np.flatnonzero(allowed)
    top = candidates[np.argsort(-scores[candidates], kind="stable")][: args.k]
    print(
        f"version {version}; neighbours of {args.item_id} "
        f"(market {markets.get(args.item_id)}){scope}"
    )
    if top.size == 0:
        print(f"no other item in market {args.market!r} besides {args.item_id}")
    for rank, i in enumerate(top, 1):
        print(
            f"{rank:>3}  {vectors.ids[i]:<20} {markets.get(vectors.ids[i]) or '-':<24} "
            f"{scores[i]:.4f}"
        )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from embedding.core.lock import exclusive
    from embedding.stages.plan import plan_run, resolve_paths
    from embedding.stages.sessionize import sessionize_stage
    from embedding.sweep import format_table, load_grid, run_sweep

    cfg = _load(args)
    grid = load_grid(args.grid)
    paths = resolve_paths(cfg, args.input, args.publish_root, args.work_dir, args.items)
    with exclusive([paths.work_dir], "python -m embedding sweep", wait_s=args.wait):
        ingest = sessionize_stage(cfg, paths, None)
        start = datetime.date.fromisoformat(ingest.days[0])
        end = datetime.date.fromisoformat(ingest.days[-1]) + datetime.timedelta(days=1)
        window_start = max(start, end - datetime.timedelta(days=cfg.window.days))
        plan = plan_run(cfg, paths, window_start, end)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        out = args.out or Path(paths.work_dir) / "sweeps" / stamp
        ranked = run_sweep(cfg, plan, grid, out, score_test=args.score_test)
    popularity = json.loads((out / "sweep.json").read_text())["popularity_val"]
    print("\n".join(format_table(ranked, grid.metric, popularity)))
    print(f"wrote {out}/sweep.json, sweep.csv and best.yaml (best: {ranked[0]['trial']})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from embedding.stages.publish import version_report
    from embedding.vectors.parquet_io import VECTORS_FILE, read_vectors
    from embedding.vectors.publish import REJECTED
    from embedding.vectors.versions import MANIFEST, verify_version

    cfg, version, folder = _chosen_version(args)
    root = folder.parent.parent
    if not (folder / MANIFEST).is_file():
        rejected = root / REJECTED / version / "report.html"
        where = f"; its report is {rejected}" if rejected.is_file() else ""
        raise InputError(f"{folder}: no such published version{where}")
    manifest = verify_version(folder)
    vectors, markets = read_vectors(folder / VECTORS_FILE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(version_report(version, manifest, vectors, markets, cfg.seed))
    print(f"wrote {args.out} (report of {version})")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from embedding.stages.plan import RunPlan
    from embedding.stages.train import finetune_stage, train_stage

    cfg = _load(args)
    try:
        plan = RunPlan.from_dict(json.loads(args.plan.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{args.plan}: not a readable run plan ({exc})") from exc
    stage = {"train": train_stage, "finetune": finetune_stage}[args.name]
    print(stage(cfg, plan))
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "run": cmd_run,
    "versions": cmd_versions,
    "rollback": cmd_rollback,
    "neighbors": cmd_neighbors,
    "report": cmd_report,
    "sweep": cmd_sweep,
    "stage": cmd_stage,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("gensim", "py4j", "smart_open"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except EmbeddingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
