"""What several commands share: the config named on the command line, and the metrics summary
printed after a run and by ``versions``.

Input: the parsed arguments (``--conf``, ``--source``, ``--set``), a metrics dict of
``embedding.quality.evaluate``. Output: the resolved ``Config``; the summary as lines of text.
"""

from __future__ import annotations

import argparse


def config_of(args: argparse.Namespace):
    """The config of ``--conf`` (default: conf/default.yaml), ``--source`` and ``--set``."""
    from embedding import PROJECT_ROOT
    from embedding.core.config import load_config

    conf = args.conf if args.conf is not None else PROJECT_ROOT / "conf" / "default.yaml"
    return load_config(conf, args.overrides, source=getattr(args, "source", None))


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
