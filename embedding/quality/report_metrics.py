"""The report's sections on the evaluation: the summary with the gate verdict, the
validation-split selection, the next-item metrics, the count baselines, the previous version,
the booked item by click position, the impression re-rank and the neighbour stability.

Input: the metrics dict of ``embedding.quality.evaluate`` (the summary: the whole
``ReportData``). Output: one ``<section>`` HTML string per function; a missing part gives a
"not available" note, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping

from embedding.quality.report_charts import bar_chart, line_chart
from embedding.quality.report_data import (
    COMPARISON_PREFIX,
    RANKING_KEYS,
    ReportData,
    method_names,
    previous_of,
    published_name,
    selection_of,
)
from embedding.quality.report_html import (
    NOT_AVAILABLE,
    as_number,
    empty_note,
    esc,
    fmt,
    html_section,
    html_table,
)


def summary_section(data: ReportData) -> str:
    metrics, gate = data.metrics, data.gate
    interval = data.data_interval or {}
    passed = gate.passed
    verdict = "passed" if passed else "failed"
    n_cases = metrics.get("n_cases")
    n_total = metrics.get("n_cases_total")
    coverage = as_number(metrics.get("coverage"))
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
            f"{fmt(n_cases)} (of {fmt(n_total)})" if n_total is not None else fmt(n_cases),
        ),
        ("coverage", "–" if coverage is None else f"{coverage:.4f} ({coverage:.1%})"),
        (
            "published vectors",
            str(published_name(metrics) or NOT_AVAILABLE)
            + (" (chosen on the validation split)" if selection_of(metrics) else ""),
        ),
        ("previous version", str(gate.previous_version or "none")),
    ]
    gate_box = (
        f'<div class="gate {verdict}"><strong>Quality gate {verdict}</strong>: '
        f"{esc(gate.metric or '?')} {esc(fmt(gate.value))}, "
        f"required {esc(fmt(gate.required))}"
        f'<br><span class="reason">{esc(gate.reason)}</span></div>'
    )
    return html_section(
        "summary", f"Version {data.version}", gate_box + "\n" + html_table((), rows)
    )


def selection_section(metrics: Mapping) -> str:
    title = "Which vectors were published, chosen on the validation split"
    selection = selection_of(metrics)
    test_note = (
        "<p>Every other figure in this report is on the test split "
        f"({esc(metrics.get('holdout', NOT_AVAILABLE))}), which played no part in this "
        "choice.</p>"
    )
    if selection is None:
        return html_section(
            "selection",
            title,
            empty_note("selection on the validation split: not recorded (older manifest)")
            + f"<p>Published vectors: {esc(published_name(metrics) or NOT_AVAILABLE)}.</p>"
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
        f"<p>Published: <strong>{esc(chosen or NOT_AVAILABLE)}</strong> "
        f"({esc(selection.get('reason', ''))}); candidates compared by {esc(metric)} on "
        f"{esc(fmt(selection.get('n_cases')))} next-item cases from "
        f"{esc(fmt(selection.get('n_sessions')))} validation sessions.</p>\n"
        f"<p>Validation split: {esc(selection.get('split', NOT_AVAILABLE))}.</p>"
    )
    table = (
        html_table(headers, rows, names.index(chosen) if chosen in names else None)
        if rows
        else empty_note(f"validation scores: {NOT_AVAILABLE}")
    )
    return html_section("selection", title, intro + "\n" + table + "\n" + test_note)


def metrics_section(metrics: Mapping) -> str:
    methods = method_names(metrics)
    if not methods:
        return html_section("metrics", "Next-item metrics", empty_note(f"metrics: {NOT_AVAILABLE}"))
    published = published_name(metrics)
    entries = [(name, metrics[name]) for name in methods]
    previous = previous_of(metrics)
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
    chart = bar_chart(
        "metrics",
        [name for name, _ in entries],
        {
            "HR@10": [m.get("hr@10") for _, m in entries],
            "MRR@20": [m.get("mrr@20") for _, m in entries],
        },
        "Next-item HR@10 and MRR@20 per method, all evaluation cases.",
    )
    note = (
        f"<p>All methods on the same {esc(fmt(metrics.get('n_cases')))} held-out next-item "
        "cases of the test split; 'covered' is the slice whose query and target items have "
        "vectors.</p>"
    )
    return html_section(
        "metrics", "Next-item metrics", note + html_table(headers, rows, highlight) + chart
    )


def baselines_section(metrics: Mapping) -> str:
    """The published vectors beside the count baselines: ratios and the gate's lift bound."""
    published = published_name(metrics)
    ratios = (metrics.get("vs_baselines") or {}).get(published)
    if not ratios:
        return html_section(
            "baselines", "Against the count baselines", empty_note("no ratios recorded")
        )
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
            f"<p>Gate: lift over popularity {esc(fmt(lift.get('diff')))}, "
            f"{esc(fmt(lift.get('confidence'), 2))} one-sided lower bound "
            f"{esc(fmt(lift.get('lower')))} ({esc(lift.get('method', ''))}, "
            f"{esc(fmt(lift.get('n_sessions')))} sessions, "
            f"{esc(fmt(lift.get('resamples')))} resamples).</p>"
        )
    return html_section(
        "baselines", "Against the count baselines", note + html_table(headers, rows)
    )


def previous_section(metrics: Mapping) -> str:
    previous = previous_of(metrics)
    title = "Candidate vs previous version"
    if previous is None:
        return html_section("previous", title, empty_note("first version: no predecessor"))
    published = published_name(metrics)
    candidate = metrics.get(published) if published else None
    candidate = candidate if isinstance(candidate, Mapping) else {}
    rows = []
    for key in (*RANKING_KEYS, "n"):
        new, old = candidate.get(key), previous.get(key)
        both = None not in (as_number(new), as_number(old))
        rows.append(
            [key, new, old, as_number(new) - as_number(old) if both and key != "n" else None]
        )
    headers = ("metric", f"candidate ({published})", f"previous ({previous.get('version', '?')})")
    note = "<p>The previous version re-scored on this run's evaluation cases.</p>"
    return html_section("previous", title, note + html_table((*headers, "difference"), rows))


def by_position_section(metrics: Mapping) -> str:
    title = "Booked item by click position"
    booked = metrics.get("booked_item")
    if not isinstance(booked, Mapping) or not booked:
        return html_section(
            "by_position", title, empty_note(f"booked-item metrics: {NOT_AVAILABLE}")
        )
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
            if "position" in r and as_number(r.get("hr@10")) is not None
        }
        for name, m in booked.items()
    }
    lines = {name: (list(by_pos), list(by_pos.values())) for name, by_pos in hr_by_position.items()}
    positions = sorted({p for by_pos in hr_by_position.values() for p in by_pos})
    position_rows = [[p, *(by_pos.get(p) for by_pos in hr_by_position.values())] for p in positions]
    chart = line_chart(
        "by_position",
        lines,
        "click position before the booking",
        "HR@10 of the booked item",
        "Rank of the booked item among all items by cosine to each clicked item, by position.",
    )
    body = (
        html_table(("method", "HR@10", "MRR@20", "mean rank", "n", "covered"), overall)
        + chart
        + html_table(("position", *(f"{name} HR@10" for name in hr_by_position)), position_rows)
    )
    return html_section("by_position", title, body)


def impressions_section(metrics: Mapping) -> str:
    title = "Impression re-rank"
    rerank = metrics.get("impression_rerank")
    methods = rerank.get("methods") if isinstance(rerank, Mapping) else None
    if not methods:
        return html_section(
            "impressions",
            title,
            empty_note("the source records no impressions: no re-rank metrics"),
        )
    names = list(methods)
    rows = [
        [name, *(methods[name].get(k) for k in ("mrr", "hr@1", "hr@5", "n", "coverage"))]
        for name in names
    ]
    caption = (
        f"MRR of the booked item when re-ranking what was on screen; "
        f"{fmt(rerank.get('n_cases'))} cases, {fmt(rerank.get('n_no_impressions'))} "
        f"bookings without impressions, {fmt(rerank.get('n_target_not_shown'))} with the "
        "booked item not shown."
    )
    chart = bar_chart(
        "impressions", names, {"MRR": [methods[n].get("mrr") for n in names]}, caption
    )
    table = html_table(("method", "MRR", "HR@1", "HR@5", "n", "coverage"), rows)
    return html_section("impressions", title, chart + table)


def stability_section(metrics: Mapping) -> str:
    title = "Neighbour stability"
    previous = previous_of(metrics)
    if previous is None:
        return html_section("stability", title, empty_note("no previous version"))
    stability = previous.get("stability") or {}
    overlap = as_number(stability.get("overlap@10"))
    if overlap is None:
        return html_section(
            "stability",
            title,
            empty_note(f"overlap@10 with {previous.get('version')}: {NOT_AVAILABLE}"),
        )
    body = (
        f"<p>Mean overlap of the top-10 neighbours with version "
        f"{esc(previous.get('version', '?'))}: <strong>{overlap:.4f}</strong> over "
        f"{esc(fmt(stability.get('n_items')))} sampled items of "
        f"{esc(fmt(stability.get('n_common')))} in both versions.</p>"
    )
    return html_section("stability", title, body)
