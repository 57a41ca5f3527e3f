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
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator

matplotlib.use("Agg")  # no display; must precede the pyplot import
import matplotlib.pyplot as plt

from embedding.vectors.item_vectors import ItemVectors

CANDIDATES = ("word2vec", "finetuned")  # the publishable candidates, in order
COMPARISON_PREFIX = "finetuned_"  # finetuned_<loss>: the loss-comparison variant, never published
DEFAULT_LOSS = "infonce"
LOSS_NAMES = {"infonce": "InfoNCE", "triplet": "triplet"}
DEFAULT_BASELINES = ("popularity", "cooccurrence", "ppmi_svd")
RANKING_KEYS = ("hr@10", "hr@20", "mrr@20", "ndcg@10")
N_MARKET_COLOURS = 10  # the most frequent markets get a colour each, the rest are grey
FIGSIZE_IN = (6.0, 3.5)
DPI = 90
NOT_AVAILABLE = "not available"

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


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows; shapes as in ``embedding.quality.evaluate`` and the
    trainers' logs."""

    version: str
    # embedding.quality.evaluate.evaluate_candidates (+ "holdout", "published", "previous")
    metrics: dict
    gate: (
        dict  # embedding.quality.evaluate.check_gate: passed, metric, value, required, reason, ...
    )
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


# ---------------------------------------------------------------- formatting helpers


def _esc(value: object) -> str:
    return html.escape(str(value))


def _number(value: object) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value))
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _empty(reason: str) -> str:
    return f'<p class="empty">{_esc(reason)}</p>'


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>'


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], highlight: int | None = None
) -> str:
    """An HTML table; cells are formatted with ``_fmt`` unless they are strings."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    lines = ["<table>", f"<thead><tr>{head}</tr></thead>" if head else "", "<tbody>"]
    for i, row in enumerate(rows):
        cells = "".join(
            f"<td>{_esc(cell if isinstance(cell, str) else _fmt(cell))}</td>" for cell in row
        )
        attr = ' class="published"' if i == highlight else ""
        lines.append(f"<tr{attr}>{cells}</tr>")
    lines.append("</tbody>\n</table>")
    return "\n".join(line for line in lines if line)


def _new_figure(figsize: tuple[float, float] = FIGSIZE_IN) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=figsize)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _figure(
    name: str, fig: plt.Figure, n_points: int, caption: str, series: Sequence[str] = ()
) -> str:
    """Render ``fig`` to an inline PNG inside a ``<figure>``, and close it; ``series`` (the
    labels of the lines drawn) goes to a ``data-series`` attribute, comma-separated."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    payload = base64.b64encode(buffer.getvalue()).decode("ascii")
    series_attr = f' data-series="{_esc(",".join(series))}"' if series else ""
    return (
        f'<figure class="plot" data-plot="{_esc(name)}" data-points="{n_points}"{series_attr}>\n'
        f'<img alt="{_esc(name)}" src="data:image/png;base64,{payload}">\n'
        f"<figcaption>{_esc(caption)}</figcaption>\n</figure>"
    )


def _bar_chart(
    name: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]], caption: str
) -> str:
    """Grouped bars, one group per label and one bar per series; missing values are not drawn."""
    n_points = sum(_number(v) is not None for values in series.values() for v in values)
    if n_points == 0:
        return _empty(f"{name}: no values to plot")
    fig, ax = _new_figure()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for j, (series_name, values) in enumerate(series.items()):
        heights = [_number(v) or 0.0 for v in values]
        ax.bar(x + (j - (len(series) - 1) / 2) * width, heights, width, label=series_name)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    return _figure(name, fig, n_points, caption)


def _line_chart(
    name: str,
    lines: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    caption: str,
) -> str:
    """One line per entry of ``lines`` (x values, y values); empty lines are left out."""
    lines = {label: xy for label, xy in lines.items() if len(xy[0])}
    n_points = sum(len(xs) for xs, _ in lines.values())
    if n_points == 0:
        return _empty(f"{name}: no values to plot")
    fig, ax = _new_figure()
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and positions
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    return _figure(name, fig, n_points, caption, series=list(lines))


# ---------------------------------------------------------------- metric lookups


def candidates(metrics: Mapping) -> list[str]:
    """Candidates with a metrics entry: word2vec, finetuned, then the ``finetuned_*`` variants
    (sorted)."""
    variants = sorted(k for k in metrics if isinstance(k, str) and k.startswith(COMPARISON_PREFIX))
    return [n for n in (*CANDIDATES, *variants) if isinstance(metrics.get(n), Mapping)]


def _methods(metrics: Mapping) -> list[str]:
    """Methods with a metrics entry: the baselines, then the candidates."""
    baselines = metrics.get("baselines") or DEFAULT_BASELINES
    names = [*baselines, *candidates(metrics)]
    return [n for n in dict.fromkeys(names) if isinstance(metrics.get(n), Mapping)]


def _loss_label(loss: object) -> str:
    return LOSS_NAMES.get(str(loss), str(loss))


def _published(metrics: Mapping) -> str | None:
    published = metrics.get("published")
    if published:
        return str(published)
    present = [n for n in CANDIDATES if isinstance(metrics.get(n), Mapping)]
    return present[-1] if present else None


def _selection(metrics: Mapping) -> Mapping | None:
    selection = metrics.get("selection")
    return selection if isinstance(selection, Mapping) else None


def _previous(metrics: Mapping) -> Mapping | None:
    previous = metrics.get("previous")
    return previous if isinstance(previous, Mapping) else None


# ---------------------------------------------------------------- sections


def summary_section(data: ReportData) -> str:
    metrics, gate = data.metrics, data.gate
    interval = data.data_interval or {}
    passed = bool(gate.get("passed"))
    verdict = "passed" if passed else "failed"
    n_cases = metrics.get("n_cases")
    n_total = metrics.get("n_cases_total")
    coverage = _number(metrics.get("coverage"))
    rows = [
        ("version", data.version),
        (
            "data interval",
            f"{interval.get('start', '?')} to {interval.get('end', '?')}"
            if interval
            else NOT_AVAILABLE,
        ),
        ("holdout", str(metrics.get("holdout", NOT_AVAILABLE))),
        (
            "evaluation cases",
            f"{_fmt(n_cases)} (of {_fmt(n_total)})" if n_total is not None else _fmt(n_cases),
        ),
        ("coverage", "–" if coverage is None else f"{coverage:.4f} ({coverage:.1%})"),
        (
            "published vectors",
            str(_published(metrics) or NOT_AVAILABLE)
            + (" (chosen on the validation split)" if _selection(metrics) else ""),
        ),
        ("previous version", str(gate.get("previous_version") or "none")),
    ]
    gate_box = (
        f'<div class="gate {verdict}"><strong>Quality gate {verdict}</strong>: '
        f"{_esc(gate.get('metric', '?'))} {_esc(_fmt(gate.get('value')))}, "
        f"required {_esc(_fmt(gate.get('required')))}"
        f'<br><span class="reason">{_esc(gate.get("reason", ""))}</span></div>'
    )
    return _section("summary", f"Version {data.version}", gate_box + "\n" + _table((), rows))


def selection_section(metrics: Mapping) -> str:
    title = "Which vectors were published, chosen on the validation split"
    selection = _selection(metrics)
    test_note = (
        "<p>Every other figure in this report is on the test split "
        f"({_esc(metrics.get('holdout', NOT_AVAILABLE))}), which played no part in this "
        "choice.</p>"
    )
    if selection is None:
        return _section(
            "selection",
            title,
            _empty("selection on the validation split: not recorded (older manifest)")
            + f"<p>Published vectors: {_esc(_published(metrics) or NOT_AVAILABLE)}.</p>"
            + test_note,
        )
    scores = selection.get("scores")
    scores = scores if isinstance(scores, Mapping) else {}
    chosen = selection.get("chosen")
    metric = str(selection.get("metric", "?"))
    names = [n for n in scores if isinstance(scores[n], Mapping)]
    rows = [
        [
            name + (" (chosen)" if name == chosen else ""),
            *(scores[name].get(k) for k in RANKING_KEYS),
            scores[name].get("n"),
        ]
        for name in names
    ]
    headers = [
        "candidate",
        *(k.upper() + (" (selection metric)" if k == metric else "") for k in RANKING_KEYS),
        "n",
    ]
    intro = (
        f"<p>Published: <strong>{_esc(chosen or NOT_AVAILABLE)}</strong> "
        f"({_esc(selection.get('reason', ''))}); candidates compared by {_esc(metric)} on "
        f"{_esc(_fmt(selection.get('n_cases')))} next-item cases from "
        f"{_esc(_fmt(selection.get('n_sessions')))} validation sessions.</p>\n"
        f"<p>Validation split: {_esc(selection.get('split', NOT_AVAILABLE))}.</p>"
    )
    table = (
        _table(headers, rows, names.index(chosen) if chosen in names else None)
        if rows
        else _empty(f"validation scores: {NOT_AVAILABLE}")
    )
    return _section("selection", title, intro + "\n" + table + "\n" + test_note)


def metrics_section(metrics: Mapping) -> str:
    methods = _methods(metrics)
    if not methods:
        return _section("metrics", "Next-item metrics", _empty(f"metrics: {NOT_AVAILABLE}"))
    published = _published(metrics)
    entries = [(name, metrics[name]) for name in methods]
    previous = _previous(metrics)
    if previous:
        entries.append((f"previous ({previous.get('version', '?')})", previous))
    rows = [
        [
            name
            + (" (published)" if name == published else "")
            + (" (loss comparison)" if name.startswith(COMPARISON_PREFIX) else ""),
            *(m.get(key) for key in RANKING_KEYS),
            (m.get("covered") or {}).get("hr@10"),
            m.get("n"),
        ]
        for name, m in entries
    ]
    highlight = methods.index(published) if published in methods else None
    headers = ("method", "HR@10", "HR@20", "MRR@20", "NDCG@10", "HR@10 covered", "n")
    chart = _bar_chart(
        "metrics",
        [name for name, _ in entries],
        {
            "HR@10": [m.get("hr@10") for _, m in entries],
            "MRR@20": [m.get("mrr@20") for _, m in entries],
        },
        "Next-item HR@10 and MRR@20 per method, all evaluation cases.",
    )
    note = (
        f"<p>All methods on the same {_esc(_fmt(metrics.get('n_cases')))} held-out next-item "
        "cases of the test split; 'covered' is the slice whose query and target items have "
        "vectors.</p>"
    )
    return _section("metrics", "Next-item metrics", note + _table(headers, rows, highlight) + chart)


def previous_section(metrics: Mapping) -> str:
    previous = _previous(metrics)
    title = "Candidate vs previous version"
    if previous is None:
        return _section("previous", title, _empty("first version: no predecessor"))
    published = _published(metrics)
    candidate = metrics.get(published) if published else None
    candidate = candidate if isinstance(candidate, Mapping) else {}
    rows = []
    for key in (*RANKING_KEYS, "n"):
        new, old = candidate.get(key), previous.get(key)
        both = None not in (_number(new), _number(old))
        rows.append([key, new, old, _number(new) - _number(old) if both and key != "n" else None])
    headers = ("metric", f"candidate ({published})", f"previous ({previous.get('version', '?')})")
    note = "<p>The previous version re-scored on this run's evaluation cases.</p>"
    return _section("previous", title, note + _table((*headers, "difference"), rows))


def by_position_section(metrics: Mapping) -> str:
    title = "Booked item by click position"
    booked = metrics.get("booked_item")
    if not isinstance(booked, Mapping) or not booked:
        return _section("by_position", title, _empty(f"booked-item metrics: {NOT_AVAILABLE}"))
    overall_keys = ("hr@10", "mrr@20", "mean_rank", "n", "covered")
    overall = [
        [name, *((m.get("overall") or {}).get(key) for key in overall_keys)]
        for name, m in booked.items()
    ]
    # method -> {position: HR@10}, positions without a value left out
    hr_by_position = {
        name: {
            r["position"]: r["hr@10"]
            for r in m.get("by_position") or []
            if "position" in r and _number(r.get("hr@10")) is not None
        }
        for name, m in booked.items()
    }
    lines = {name: (list(by_pos), list(by_pos.values())) for name, by_pos in hr_by_position.items()}
    positions = sorted({p for by_pos in hr_by_position.values() for p in by_pos})
    position_rows = [[p, *(by_pos.get(p) for by_pos in hr_by_position.values())] for p in positions]
    chart = _line_chart(
        "by_position",
        lines,
        "click position before the booking",
        "HR@10 of the booked item",
        "Rank of the booked item among all items by cosine to each clicked item, by position.",
    )
    body = (
        _table(("method", "HR@10", "MRR@20", "mean rank", "n", "covered"), overall)
        + chart
        + _table(("position", *(f"{name} HR@10" for name in hr_by_position)), position_rows)
    )
    return _section("by_position", title, body)


def impressions_section(metrics: Mapping) -> str:
    title = "Impression re-rank"
    rerank = metrics.get("impression_rerank")
    methods = rerank.get("methods") if isinstance(rerank, Mapping) else None
    if not methods:
        return _section(
            "impressions", title, _empty("the source records no impressions: no re-rank metrics")
        )
    names = list(methods)
    rows = [
        [name, *(methods[name].get(k) for k in ("mrr", "hr@1", "hr@5", "n", "coverage"))]
        for name in names
    ]
    caption = (
        f"MRR of the booked item when re-ranking what was on screen; "
        f"{_fmt(rerank.get('n_cases'))} cases, {_fmt(rerank.get('n_no_impressions'))} "
        f"bookings without impressions, {_fmt(rerank.get('n_target_not_shown'))} with the "
        "booked item not shown."
    )
    chart = _bar_chart(
        "impressions", names, {"MRR": [methods[n].get("mrr") for n in names]}, caption
    )
    table = _table(("method", "MRR", "HR@1", "HR@5", "n", "coverage"), rows)
    return _section("impressions", title, chart + table)


def _history_xy(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    points = [
        (float(row.get("epoch", i + 1)), _number(row.get(key))) for i, row in enumerate(history)
    ]
    points = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in points], [y for _, y in points]


def training_section(
    word2vec_history: Sequence[Mapping],
    finetune_history: Sequence[Mapping],
    loss: str = DEFAULT_LOSS,
) -> str:
    parts = []
    if word2vec_history:
        parts.append(
            _line_chart(
                "word2vec_loss",
                {"word2vec": _history_xy(word2vec_history, "loss")},
                "epoch",
                "loss",
                "word2vec loss per epoch: gensim's loss is per-epoch differences of a float32 "
                "cumulative counter, indicative only.",
            )
        )
    else:
        parts.append(_empty("word2vec: no training history"))
    if finetune_history:
        parts.append(
            _line_chart(
                "finetune_loss",
                {"finetune": _history_xy(finetune_history, "loss")},
                "epoch",
                f"{_loss_label(loss)} loss",
                f"Fine-tune {_loss_label(loss)} loss per epoch (training pairs).",
            )
        )
        parts.append(
            _line_chart(
                "finetune_recall",
                {"finetune": _history_xy(finetune_history, "val_recall")},
                "epoch",
                "validation recall",
                "Fine-tune validation recall per epoch (held-out booking pairs).",
            )
        )
    else:
        parts.append(_empty("fine-tune: no training history"))
    return _section("training", "Training", "\n".join(parts))


def _finetune_runs(data: ReportData) -> dict[str, Mapping]:
    """Candidate name -> its fine-tune stats: the configured run (``finetuned``) first, then the
    comparison runs (from the stats, or only from the metrics when their stats are missing)."""
    stats = data.finetune_stats if isinstance(data.finetune_stats, Mapping) else {}
    configured = {k: v for k, v in stats.items() if k != "comparison"}
    if not configured.get("history") and data.finetune_history:
        configured["history"] = list(data.finetune_history)
    comparison = data.finetune_comparison or stats.get("comparison") or {}
    runs: dict[str, Mapping] = {"finetuned": configured}
    runs.update((str(n), s) for n, s in comparison.items() if isinstance(s, Mapping))
    for name in candidates(data.metrics):
        if name.startswith(COMPARISON_PREFIX):
            runs.setdefault(name, {})
    return runs


def _run_loss(name: str, stats: Mapping) -> str:
    if stats.get("loss"):
        return str(stats["loss"])
    return name[len(COMPARISON_PREFIX) :] if name.startswith(COMPARISON_PREFIX) else DEFAULT_LOSS


def _best(stats: Mapping) -> tuple[object, object]:
    """(best epoch, best validation recall): from the stats, else from the history."""
    if "best_epoch" in stats or "val_recall_best" in stats:
        return stats.get("best_epoch"), stats.get("val_recall_best")
    xs, ys = _history_xy(stats.get("history") or [], "val_recall")
    if not ys:
        return None, None
    best = int(np.argmax(ys))
    return int(xs[best]), ys[best]


def loss_comparison_section(data: ReportData) -> str:
    title = "Loss comparison: InfoNCE vs triplet"
    runs = _finetune_runs(data)
    configured_loss = _loss_label(_run_loss("finetuned", runs["finetuned"]))
    if len(runs) < 2:
        return _section(
            "loss_comparison",
            title,
            _empty(f"no loss comparison: only the configured loss ({configured_loss}) was trained"),
        )
    # InfoNCE first, then by name
    order = sorted(runs, key=lambda n: (_run_loss(n, runs[n]) != DEFAULT_LOSS, n))
    published = _published(data.metrics)
    rows = []
    for name in order:
        stats, test = runs[name], data.metrics.get(name)
        test = test if isinstance(test, Mapping) else {}
        best_epoch, best_recall = _best(stats)
        role = "configured" if name == "finetuned" else "comparison"
        rows.append(
            [
                f"{name} ({role}{', published' if name == published else ''})",
                _loss_label(_run_loss(name, stats)),
                *(test.get(k) for k in RANKING_KEYS),
                stats.get("val_recall_base"),
                best_recall,
                best_epoch,
                stats.get("epochs_run", len(stats.get("history") or []) or None),
            ]
        )
    headers = (
        "run",
        "loss",
        *(f"test {k.upper()}" for k in RANKING_KEYS),
        "val recall base",
        "val recall best",
        "best epoch",
        "epochs",
    )
    lines = {}
    for name in order:
        stats = runs[name]
        xs, ys = _history_xy(stats.get("history") or [], "val_recall")
        base = _number(stats.get("val_recall_base"))
        if xs and base is not None:
            xs, ys = [0.0, *xs], [base, *ys]
        lines[f"{_loss_label(_run_loss(name, stats))} ({name})"] = (xs, ys)
    chart = _line_chart(
        "loss_comparison",
        lines,
        "epoch (0: the word2vec base vectors)",
        "validation recall",
        "Validation recall per epoch of each fine-tune run, same params and seed; only the loss "
        "differs. The comparison run is reported, never published.",
    )
    sources = sorted({str(runs[n]["val_source"]) for n in order if runs[n].get("val_source")})
    note = (
        "<p>Test metrics on the test split (as in the metrics section); validation recall on "
        "the fine-tune's held-out booking pairs"
        + (f" ({_esc(', '.join(sources))})" if sources else "")
        + ".</p>"
    )
    return _section("loss_comparison", title, note + _table(headers, rows) + chart)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components (SVD of the centred matrix).

    Returns:
        ``(coords, explained)``: coords (n, 2), explained (2,) share of variance per component.
    """
    centred = vectors.astype(np.float64) - vectors.mean(axis=0, dtype=np.float64)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return centred @ components[:2].T, explained


def projection_section(data: ReportData, seed: int, max_points: int) -> str:
    title = "2-D projection (PCA)"
    vectors = data.vectors
    n_items = len(vectors.ids)
    if n_items < 3 or vectors.dim < 2:
        return _section("projection", title, _empty("too few items or dimensions to project"))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_items, size=min(max_points, n_items), replace=False))
    coords, explained = pca_2d(vectors.vectors[rows])
    labels = [data.markets.get(vectors.ids[r]) for r in rows]
    ranked = Counter(m for m in labels if m is not None).most_common()
    top = [m for m, _ in sorted(ranked, key=lambda mc: (-mc[1], mc[0]))[:N_MARKET_COLOURS]]
    is_other = np.array([m not in top for m in labels], dtype=bool)
    fig, ax = _new_figure((6.0, 4.0))
    if is_other.any():
        ax.scatter(*coords[is_other].T, s=4, c="#bbbbbb", alpha=0.6, label="other")
    colours = plt.get_cmap("tab10")
    for j, market in enumerate(top):
        mask = np.array([m == market for m in labels], dtype=bool)
        ax.scatter(*coords[mask].T, s=4, color=colours(j), alpha=0.8, label=str(market))
    ax.set_xlabel(f"PC1 ({explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.1%} of variance)")
    ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    caption = (
        f"{len(rows)} of {n_items} items (uniform sample, seed {seed}), coloured by market: "
        f"the {len(top)} most frequent markets, the rest grey."
    )
    return _section("projection", title, _figure("projection", fig, len(rows), caption))


def nearest_neighbours(vectors: ItemVectors, row: int, k: int) -> list[tuple[int, float]]:
    """The k rows most cosine-similar to ``row``, itself excluded: (row, score), best first;
    ties go to the lower row."""
    matrix = vectors.vectors
    norms = np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
    scores = (matrix @ matrix[row]) / (norms * norms[row])  # (n_items,)
    scores[row] = -np.inf
    k = min(k, len(scores) - 1)
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return [(int(r), float(scores[r])) for r in order]


def neighbours_section(data: ReportData, n_examples: int, k: int) -> str:
    vectors = data.vectors
    title = f"Nearest neighbours of the {min(n_examples, len(vectors.ids))} most frequent items"
    if len(vectors.ids) < 2 or n_examples < 1:
        return _section("neighbours", title, _empty("too few items for neighbours"))
    by_count = np.lexsort((np.arange(len(vectors.ids)), -vectors.counts))[:n_examples]
    parts = [f"<p>Exact cosine, top {k}, the query item excluded.</p>"]
    for row in by_count:
        item = vectors.ids[row]
        parts.append(
            f"<h3>{_esc(item)} <small>(market {_esc(data.markets.get(item) or '–')}, "
            f"count {int(vectors.counts[row])})</small></h3>"
        )
        rows = [
            [
                rank,
                vectors.ids[r],
                score,
                str(data.markets.get(vectors.ids[r]) or "–"),
                int(vectors.counts[r]),
            ]
            for rank, (r, score) in enumerate(nearest_neighbours(vectors, int(row), k), start=1)
        ]
        parts.append(_table(("rank", "item", "cosine", "market", "count"), rows))
    return _section("neighbours", title, "\n".join(parts))


def stability_section(metrics: Mapping) -> str:
    title = "Neighbour stability"
    previous = _previous(metrics)
    if previous is None:
        return _section("stability", title, _empty("no previous version"))
    stability = previous.get("stability") or {}
    overlap = _number(stability.get("overlap@10"))
    if overlap is None:
        return _section(
            "stability",
            title,
            _empty(f"overlap@10 with {previous.get('version')}: {NOT_AVAILABLE}"),
        )
    body = (
        f"<p>Mean overlap of the top-10 neighbours with version "
        f"{_esc(previous.get('version', '?'))}: <strong>{overlap:.4f}</strong> over "
        f"{_esc(_fmt(stability.get('n_items')))} sampled items of "
        f"{_esc(_fmt(stability.get('n_common')))} in both versions.</p>"
    )
    return _section("stability", title, body)


def baselines_section(metrics: Mapping) -> str:
    """The published vectors beside the count baselines: ratios and the gate's lift bound."""
    published = _published(metrics)
    ratios = (metrics.get("vs_baselines") or {}).get(published)
    if not ratios:
        return _section("baselines", "Against the count baselines", _empty("no ratios recorded"))
    rows = [
        [base, metrics.get(base, {}).get("hr@10"), r.get("hr@10"), metrics.get(base, {}).get(
            "mrr@20"), r.get("mrr@20")]
        for base, r in ratios.items()
    ]  # fmt: skip
    headers = ("baseline", "its HR@10", f"{published} / it", "its MRR@20", f"{published} / it")
    lift = (metrics.get("lift_ci") or {}).get(published)
    note = (
        "<p>Ratios above 1: the published vectors rank the held-out next item better than the "
        "baseline on the same cases. An analyst could serve co-occurrence counts from a SQL "
        "query; these ratios say what the vectors add.</p>"
    )
    if lift:
        note += (
            f"<p>Gate: lift over popularity {_esc(_fmt(lift.get('diff')))}, "
            f"{_esc(_fmt(lift.get('confidence'), 2))} one-sided lower bound "
            f"{_esc(_fmt(lift.get('lower')))} ({_esc(lift.get('method', ''))}, "
            f"{_esc(_fmt(lift.get('n_sessions')))} sessions, "
            f"{_esc(_fmt(lift.get('resamples')))} resamples).</p>"
        )
    return _section("baselines", "Against the count baselines", note + _table(headers, rows))


def derived_section(resolved: Mapping | None) -> str:
    derived = (resolved or {}).get("derived_from_corpus")
    if not resolved:
        return _section("derived", "Skip-gram knobs used", _empty("not recorded"))
    keys = ("vector_size", "sample", "epochs", "window", "negative", "ns_exponent", "min_count")
    rows = [
        [key, resolved.get(key), "derived from the corpus" if derived and key in derived.get(
            "derived", ()) else "config"]
        for key in keys
    ]  # fmt: skip
    note = ""
    if derived:
        note = (
            f"<p>Training corpus: {_esc(_fmt(derived.get('n_tokens')))} tokens, "
            f"{_esc(_fmt(derived.get('n_items')))} items. Rules: {_esc(derived.get('rules'))}.</p>"
        )
    return _section("derived", "Skip-gram knobs used", note + _table(("knob", "value", "from"),
                                                                        rows))  # fmt: skip


def params_section(params: Mapping | None) -> str:
    if not params:
        return _section("params", "Configuration", _empty("no configuration given"))
    text = json.dumps(params, indent=2, sort_keys=True, default=str)
    body = f"<details><summary>resolved config</summary><pre>{_esc(text)}</pre></details>"
    return _section("params", "Configuration", body)


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
        f"<title>Item vectors {_esc(data.version)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<h1>Item vectors {_esc(data.version)}</h1>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
