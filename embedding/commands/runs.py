"""The commands that produce data: ``generate`` (a synthetic click log), ``run`` (the whole
pipeline, then publish) and ``stage`` (one heavy stage of a planned run, for the DAG).

Input: the parsed arguments of the subcommand. Output: a summary on stdout and exit code 0; bad
input raises an ``InputError`` (exit 2), a failed gate a ``GateError`` from the pipeline.
"""

from __future__ import annotations

import argparse
import json

from embedding.commands.common import config_of, format_metrics
from embedding.core.errors import InputError


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


def cmd_run(args: argparse.Namespace) -> int:
    from embedding.stages.pipeline import run_pipeline
    from embedding.stages.plan import resolve_paths, writer_lock

    cfg = config_of(args)
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


def cmd_stage(args: argparse.Namespace) -> int:
    from embedding.stages.plan import RunPlan
    from embedding.stages.train import finetune_stage, train_stage

    cfg = config_of(args)
    try:
        plan = RunPlan.from_dict(json.loads(args.plan.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{args.plan}: not a readable run plan ({exc})") from exc
    stage = {"train": train_stage, "finetune": finetune_stage}[args.name]
    print(stage(cfg, plan))
    return 0
