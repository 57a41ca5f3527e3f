"""A self-contained HTML report on one version of item vectors, for analysts.

Input: a ``ReportData`` (the version id, the metrics dict of
``embedding.quality.evaluate``, the gate
verdict, the ``ItemVectors``, each item's market, the per-epoch training histories, the fine-tune
stats with the loss-comparison run, the resolved config and the data interval). Output: one HTML
string with sections ``summary``, ``selection``, ``metrics``, ``previous``, ``by_position``,
``impressions``, ``training``, ``loss_comparison``, ``projection``, ``neighbours``, ``stability``
and ``params``, in that order; the caller writes it to a file. The candidates are ``word2vec``,
``finetuned`` and any ``finetuned_<loss>`` metrics entry (the loss-comparison variant, reported but
never published); ``selection`` shows the validation-split choice, every other figure is on the
test split. Plots are PNGs drawn
with matplotlib (Agg) and inlined as base64 ``data:`` URIs: no external files, no JavaScript, no
network. Each plot is a ``<figure class="plot" data-plot=NAME data-points=N>``, N being the number
of data points drawn; a plot without data is not drawn, a ``<p class="empty">`` says why instead.
Missing optional metrics give a "not available" note, never an exception.

This module assembles the document; the sections live in ``report_metrics`` (the evaluation),
``report_training`` (training, loss comparison, knobs, config) and ``report_vectors``
(projection, neighbours), ``ReportData`` and the metrics lookups in ``report_data``, the HTML
helpers in ``report_html`` and the plots in ``report_charts``. The names re-exported here
(``__all__``) stay importable from ``embedding.quality.report``.
"""

from __future__ import annotations

from embedding.quality.report_data import DEFAULT_LOSS, ReportData, candidates
from embedding.quality.report_html import esc
from embedding.quality.report_metrics import (
    baselines_section,
    by_position_section,
    impressions_section,
    metrics_section,
    previous_section,
    selection_section,
    stability_section,
    summary_section,
)
from embedding.quality.report_training import (
    derived_section,
    loss_comparison_section,
    params_section,
    training_section,
)
from embedding.quality.report_vectors import (
    nearest_neighbours,
    neighbours_section,
    pca_2d,
    projection_section,
)

__all__ = [
    "ReportData",
    "baselines_section",
    "by_position_section",
    "candidates",
    "derived_section",
    "impressions_section",
    "loss_comparison_section",
    "metrics_section",
    "nearest_neighbours",
    "neighbours_section",
    "params_section",
    "pca_2d",
    "previous_section",
    "projection_section",
    "render_report",
    "selection_section",
    "stability_section",
    "summary_section",
    "training_section",
]

CSS = """
body { font-family: sans-serif; max-width: 60em; margin: 1em auto; padding: 0 1em; color: #222; }
section { margin-bottom: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.published { background: #fff3c4; font-weight: bold; }
.gate { border: 2px solid; padding: 0.6em 1em; font-size: 1.1em; }
.gate.passed { border-color: #2a7a2a; background: #eaf6ea; }
.gate.failed { border-color: #a82222; background: #fbeaea; }
p.empty { color: #777; font-style: italic; }
figure.plot { margin: 0.5em 0; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
"""


def render_report(
    data: ReportData, seed: int = 0, n_examples: int = 5, k: int = 10, max_points: int = 3000
) -> str:
    """The whole report as one HTML document (a pure function: the caller writes the file).

    Args:
        seed: seeds the projection's sample of items.
        n_examples: how many of the most frequent items get a neighbour table.
        k: neighbours per table.
        max_points: most items drawn in the projection.
    """
    if k < 1 or max_points < 1 or n_examples < 0:
        raise ValueError(
            f"need k >= 1, max_points >= 1, n_examples >= 0; got {k}, {max_points}, {n_examples}"
        )
    metrics = data.metrics
    sections = [
        summary_section(data),
        selection_section(metrics),
        metrics_section(metrics),
        baselines_section(metrics),
        previous_section(metrics),
        by_position_section(metrics),
        impressions_section(metrics),
        training_section(
            data.word2vec_history,
            data.finetune_history,
            str((data.finetune_stats or {}).get("loss") or DEFAULT_LOSS),
        ),
        loss_comparison_section(data),
        projection_section(data, seed, max_points),
        neighbours_section(data, n_examples, k),
        stability_section(metrics),
        derived_section(data.word2vec_resolved),
        params_section(data.params),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Item vectors {esc(data.version)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<h1>Item vectors {esc(data.version)}</h1>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
