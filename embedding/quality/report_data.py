"""What the analysts' report shows (``ReportData``) and lookups into its metrics dict.

Input: the metrics dict of ``embedding.quality.evaluate`` as the pipeline writes it (with
"baselines", "published", "selection", "previous" when known). Output: the candidates and
methods that have an entry, the published candidate, the selection and previous-version entries
(None when missing or not a mapping), a loss's display name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from embedding.quality.gate import GateVerdict
from embedding.vectors.item_vectors import ItemVectors

CANDIDATES = ("word2vec", "finetuned")  # the publishable candidates, in order
COMPARISON_PREFIX = "finetuned_"  # finetuned_<loss>: the loss-comparison variant, never published
DEFAULT_LOSS = "infonce"
LOSS_NAMES = {"infonce": "InfoNCE", "triplet": "triplet"}
DEFAULT_BASELINES = ("popularity", "cooccurrence", "ppmi_svd")
RANKING_KEYS = ("hr@10", "hr@20", "mrr@20", "ndcg@10")


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows; shapes as in ``embedding.quality.evaluate`` and the
    trainers' logs."""

    version: str
    # embedding.quality.evaluate.evaluate_candidates (+ "holdout", "published", "previous")
    metrics: dict
    gate: GateVerdict  # embedding.quality.gate.check_gate's
    vectors: ItemVectors
    markets: Mapping[str, str | None]  # item_id -> market (None or absent: unknown)
    word2vec_history: Sequence[dict] = ()  # per epoch: epoch, loss, words_per_s
    finetune_history: Sequence[dict] = ()  # per epoch: epoch, loss, val_recall
    # the manifest's ``finetune`` dict: the configured run's stats (loss, best_epoch,
    # val_recall_base, val_recall_best, history, ...) and maybe "comparison"
    finetune_stats: Mapping = field(default_factory=dict)
    # candidate name (finetuned_<loss>) -> that run's stats, same shape; when empty, taken from
    # ``finetune_stats["comparison"]``
    finetune_comparison: Mapping[str, Mapping] = field(default_factory=dict)
    params: dict | None = None  # the resolved config, shown collapsed
    data_interval: dict | None = None  # {"start": "YYYY-MM-DD", "end": "YYYY-MM-DD"}
    # the skip-gram knobs used (the manifest's word2vec.resolved), derived ones marked
    word2vec_resolved: Mapping | None = None


def candidates(metrics: Mapping) -> list[str]:
    """Candidates with a metrics entry: word2vec, finetuned, then the ``finetuned_*`` variants
    (sorted)."""
    variants = sorted(k for k in metrics if isinstance(k, str) and k.startswith(COMPARISON_PREFIX))
    return [n for n in (*CANDIDATES, *variants) if isinstance(metrics.get(n), Mapping)]


def method_names(metrics: Mapping) -> list[str]:
    """Methods with a metrics entry: the baselines, then the candidates."""
    baselines = metrics.get("baselines") or DEFAULT_BASELINES
    names = [*baselines, *candidates(metrics)]
    return [n for n in dict.fromkeys(names) if isinstance(metrics.get(n), Mapping)]


def loss_label(loss: object) -> str:
    return LOSS_NAMES.get(str(loss), str(loss))


def published_name(metrics: Mapping) -> str | None:
    published = metrics.get("published")
    if published:
        return str(published)
    present = [n for n in CANDIDATES if isinstance(metrics.get(n), Mapping)]
    return present[-1] if present else None


def selection_of(metrics: Mapping) -> Mapping | None:
    selection = metrics.get("selection")
    return selection if isinstance(selection, Mapping) else None


def previous_of(metrics: Mapping) -> Mapping | None:
    previous = metrics.get("previous")
    return previous if isinstance(previous, Mapping) else None
