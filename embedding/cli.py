"""Command line: ``python -m embedding {generate,run,versions,rollback,neighbors,report,sweep}``
(CONTRACTS §3).

Exit codes: 0 published (or already published); 2 bad input or configuration (one clear line on
stderr); 3 quality gate failed; 1 anything else. CURRENT is unchanged on any non-zero exit.

This module holds the parser, the command table and ``main``; the command bodies live in
``embedding.commands`` (``runs``: generate, run, stage; ``versions``: versions, rollback,
neighbors, report), except ``sweep``, which stays here because ``embedding.sweep`` is an entry
module itself and the ``commands`` layer sits below the entry modules.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from embedding.commands.common import config_of
from embedding.commands.runs import cmd_generate, cmd_run, cmd_stage
from embedding.commands.versions import cmd_neighbors, cmd_report, cmd_rollback, cmd_versions
from embedding.core.errors import EmbeddingError

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


def cmd_sweep(args: argparse.Namespace) -> int:
    from embedding.core.lock import exclusive
    from embedding.stages.plan import plan_run, resolve_paths
    from embedding.stages.sessionize import sessionize_stage
    from embedding.sweep import format_table, load_grid, run_sweep

    cfg = config_of(args)
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
