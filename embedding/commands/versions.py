"""The commands on what is published: ``versions`` (list them), ``rollback`` (point CURRENT back
and pin it), ``neighbors`` (one item's nearest items) and ``report`` (a version's HTML report).

Input: the parsed arguments of the subcommand; the publish root from ``--publish-root`` or the
config. Output: text on stdout (``report``: the HTML file) and exit code 0; a missing version,
item or market raises an ``InputError`` (exit 2).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from embedding.commands.common import config_of, format_metrics
from embedding.core.errors import InputError, PublishError
from embedding.quality.gate import GateVerdict

if TYPE_CHECKING:
    from embedding.core.config import Config


def _day(version: str) -> str:
    day = version.split("-", 1)[0]
    return f"{day[:4]}-{day[4:6]}-{day[6:]}" if len(day) == 8 and day.isdigit() else day


def _gate_summary(gate: GateVerdict | None) -> str:
    if gate is None:
        return "gate -"
    figure = f"{gate.value:.4f}" if isinstance(gate.value, int | float) else "-"
    need = f" (needs {gate.required:.4f})" if isinstance(gate.required, int | float) else ""
    verdict = "passed" if gate.passed else "failed"
    return f"{gate.metric or 'gate'} {figure}{need} {verdict}"


def cmd_versions(args: argparse.Namespace) -> int:
    from embedding.stages.plan import resolve_paths
    from embedding.stages.publish import LAST_PUBLISH
    from embedding.vectors.publish import REJECTED, read_pin, version_names
    from embedding.vectors.versions import MANIFEST, VERSIONS, current_or_none

    cfg = config_of(args)
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
        raw = manifest.get("gate")
        gate = GateVerdict.from_dict(raw) if isinstance(raw, Mapping) and raw else None
        line = (
            f"{mark} {name:<{width}}  {_day(name)}  {state:<9}  "
            f"{manifest.get('n_items', '?'):>7} items  dim {manifest.get('dim', '?')}  "
            f"{_gate_summary(gate)}"
        )
        if kind == REJECTED and gate is not None and gate.reason:
            line += f": {gate.reason}"
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

    cfg = config_of(args)
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

    cfg = config_of(args)
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
