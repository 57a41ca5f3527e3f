"""The report's sections on training: the per-epoch curves, the InfoNCE vs triplet loss
comparison, the skip-gram knobs used and the resolved config.

Input: the trainers' per-epoch histories, the manifest's fine-tune stats (with the comparison
runs), the skip-gram knobs resolved and the config. Output: one ``<section>`` HTML string per
function; a missing part gives a note, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from embedding.quality.report_charts import line_chart
from embedding.quality.report_data import (
    COMPARISON_PREFIX,
    DEFAULT_LOSS,
    RANKING_KEYS,
    ReportData,
    candidates,
    loss_label,
    published_name,
)
from embedding.quality.report_html import as_number, empty_note, esc, fmt, html_section, html_table


def _history_xy(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    points = [
        (float(row.get("epoch", i + 1)), as_number(row.get(key))) for i, row in enumerate(history)
    ]
    points = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in points], [y for _, y in points]


def _history_charts(
    series: str, history: Sequence[Mapping], charts: Sequence[tuple[str, str, str, str]]
) -> list[str]:
    """One line chart of ``history`` per ``(name, key, ylabel, caption)``: ``key`` per epoch."""
    return [
        line_chart(name, {series: _history_xy(history, key)}, "epoch", ylabel, caption)
        for name, key, ylabel, caption in charts
    ]


def training_section(
    word2vec_history: Sequence[Mapping],
    finetune_history: Sequence[Mapping],
    loss: str = DEFAULT_LOSS,
) -> str:
    label = loss_label(loss)
    word2vec_caption = (
        "word2vec loss per epoch: gensim's loss is per-epoch differences of a float32 "
        "cumulative counter, indicative only."
    )
    if word2vec_history:
        charts = [("word2vec_loss", "loss", "loss", word2vec_caption)]
        parts = _history_charts("word2vec", word2vec_history, charts)
    else:
        parts = [empty_note("word2vec: no training history")]
    if finetune_history:
        charts = [
            (
                "finetune_loss",
                "loss",
                f"{label} loss",
                f"Fine-tune {label} loss per epoch (training pairs).",
            ),
            (
                "finetune_recall",
                "val_recall",
                "validation recall",
                "Fine-tune validation recall per epoch (held-out booking pairs).",
            ),
        ]
        parts += _history_charts("finetune", finetune_history, charts)
    else:
        parts.append(empty_note("fine-tune: no training history"))
    return html_section("training", "Training", "\n".join(parts))


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
    configured_loss = loss_label(_run_loss("finetuned", runs["finetuned"]))
    if len(runs) < 2:
        return html_section(
            "loss_comparison",
            title,
            empty_note(
                f"no loss comparison: only the configured loss ({configured_loss}) was trained"
            ),
        )
    # InfoNCE first, then by name
    order = sorted(runs, key=lambda n: (_run_loss(n, runs[n]) != DEFAULT_LOSS, n))
    published = published_name(data.metrics)
    rows = []
    for name in order:
        stats, test = runs[name], data.metrics.get(name)
        test = test if isinstance(test, Mapping) else {}
        best_epoch, best_recall = _best(stats)
        role = "configured" if name == "finetuned" else "comparison"
        rows.append(
            [
                f"{name} ({role}{', published' if name == published else ''})",
                loss_label(_run_loss(name, stats)),
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
        base = as_number(stats.get("val_recall_base"))
        if xs and base is not None:
            xs, ys = [0.0, *xs], [base, *ys]
        lines[f"{loss_label(_run_loss(name, stats))} ({name})"] = (xs, ys)
    chart = line_chart(
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
        + (f" ({esc(', '.join(sources))})" if sources else "")
        + ".</p>"
    )
    return html_section("loss_comparison", title, note + html_table(headers, rows) + chart)


def derived_section(resolved: Mapping | None) -> str:
    derived = (resolved or {}).get("derived_from_corpus")
    if not resolved:
        return html_section("derived", "Skip-gram knobs used", empty_note("not recorded"))
    keys = ("vector_size", "sample", "epochs", "window", "negative", "ns_exponent", "min_count")
    rows = [
        [key, resolved.get(key), "derived from the corpus" if derived and key in derived.get(
            "derived", ()) else "config"]
        for key in keys
    ]  # fmt: skip
    note = ""
    if derived:
        note = (
            f"<p>Training corpus: {esc(fmt(derived.get('n_tokens')))} tokens, "
            f"{esc(fmt(derived.get('n_items')))} items. Rules: {esc(derived.get('rules'))}.</p>"
        )
    table = html_table(("knob", "value", "from"), rows)
    return html_section("derived", "Skip-gram knobs used", note + table)


def params_section(params: Mapping | None) -> str:
    if not params:
        return html_section("params", "Configuration", empty_note("no configuration given"))
    text = json.dumps(params, indent=2, sort_keys=True, default=str)
    body = f"<details><summary>resolved config</summary><pre>{esc(text)}</pre></details>"
    return html_section("params", "Configuration", body)
