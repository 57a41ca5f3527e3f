"""The HTML report: sections in order, plots that hold data, neighbours, escaping, missing parts,
the validation-split selection and the InfoNCE vs triplet loss comparison.

Parsed with the stdlib ``HTMLParser``; ~200 random unit vectors in 3 markets, a hand-made
metrics dict shaped as ``embedding.quality.evaluate`` and the pipeline write it (with the comparison
candidate ``finetuned_triplet`` and ``selection``), fine-tune stats shaped as the manifest's.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest

from embedding.quality.gate import GateVerdict
from embedding.quality.report import (
    ReportData,
    candidates,
    loss_comparison_section,
    render_report,
    selection_section,
)
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

SECTIONS = [
    "summary",
    "selection",
    "metrics",
    "baselines",
    "previous",
    "by_position",
    "impressions",
    "training",
    "loss_comparison",
    "projection",
    "neighbours",
    "stability",
    "derived",
    "params",
]
PLOTS = [
    "metrics",
    "by_position",
    "impressions",
    "word2vec_loss",
    "finetune_loss",
    "finetune_recall",
    "loss_comparison",
    "projection",
]
GATE_REASON = "finetuned hr@10 0.2100 >= required 0.1500 (min_value 0.05; no previous version)"
K = 10
N_EXAMPLES = 5
SPLIT = "sessions of the last day before the test day (2026-01-07)"
FT_HISTORY = [{"epoch": e, "loss": 2.0 / e, "val_recall": 0.1 * e} for e in range(1, 4)]
TRIPLET_HISTORY = [{"epoch": e, "loss": 0.5 / e, "val_recall": 0.08 * e} for e in range(1, 5)]


class ReportParser(HTMLParser):
    """Collects section ids, plots (name, data-points, img src), neighbour tables and text."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.plots: dict[str, dict] = {}
        self.empty_notes: list[str] = []
        self.neighbour_tables: list[dict] = []  # {"query": item id, "rows": [[cells]]}
        self.text: list[str] = []
        self._section: str | None = None
        self._plot: str | None = None
        self._in: str | None = None  # "h3", "td", "empty" while collecting their text
        self._buffer: list[str] = []
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "section":
            self._section = attr["id"]
            self.sections.append(attr["id"])
        elif tag == "figure" and attr.get("class") == "plot":
            self._plot = attr["data-plot"]
            self.plots[self._plot] = {
                "points": int(attr["data-points"]),
                "series": [n for n in (attr.get("data-series") or "").split(",") if n],
                "src": None,
            }
        elif tag == "img" and self._plot is not None:
            self.plots[self._plot]["src"] = attr["src"]
        elif tag == "p" and attr.get("class") == "empty":
            self._start("empty")
        elif tag == "h3" and self._section == "neighbours":
            self._start("h3")
        elif tag == "tr" and self._section == "neighbours":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._start("td")

    def _start(self, what: str) -> None:
        self._in, self._buffer = what, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._plot = None
        elif tag == "p" and self._in == "empty":
            self.empty_notes.append("".join(self._buffer))
            self._in = None
        elif tag == "h3" and self._in == "h3":
            query = "".join(self._buffer).split(" (market")[0].strip()
            self.neighbour_tables.append({"query": query, "rows": []})
            self._in = None
        elif tag == "td" and self._in == "td":
            self._row.append("".join(self._buffer))
            self._in = None
        elif tag == "tr" and self._row is not None:
            if self._row:  # header rows have no <td>
                self.neighbour_tables[-1]["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in is not None:
            self._buffer.append(data)


class TableParser(HTMLParser):
    """The body rows of every table: ``(tr class, [cell texts])``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str | None, list[str]]] = []
        self._row: list[str] | None = None
        self._class: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._row, self._class = [], dict(attrs).get("class")
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row:
            self.rows.append((self._class, self._row))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def section(document: str, section_id: str) -> str:
    return document.split(f'<section id="{section_id}">')[1].split("</section>")[0]


def table_rows(fragment: str) -> list[tuple[str | None, list[str]]]:
    parser = TableParser()
    parser.feed(fragment)
    parser.close()
    return parser.rows


def parse(document: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(document)
    parser.close()
    return parser


def ranking(hr10: float) -> dict:
    values = {"hr@10": hr10, "hr@20": hr10 + 0.05, "mrr@20": hr10 / 3, "ndcg@10": hr10 / 2}
    return {**values, "n": 400, "covered": {**values, "n": 350}}


def booked(hr10: float) -> dict:
    positions = [
        {
            "position": p,
            "n": 50,
            "covered": 45,
            "hr@10": hr10 / p,
            "mrr@20": hr10 / 4,
            "mean_rank": 9.0,
        }
        for p in range(1, 6)
    ]
    overall = {"hr@10": hr10, "mrr@20": hr10 / 4, "mean_rank": 12.5, "n": 250, "covered": 225}
    return {"overall": overall, "by_position": positions}


def full_metrics() -> dict:
    baselines = ["popularity", "cooccurrence", "ppmi_svd"]
    methods = [*baselines, "word2vec", "finetuned", "finetuned_triplet"]
    rerank = {"mrr": 0.3, "hr@1": 0.2, "hr@5": 0.6, "n": 80}
    return {
        "n_cases": 400,
        "n_cases_total": 1200,
        "coverage": 0.875,
        "holdout": "last day (2026-01-08)",
        "published": "finetuned",
        "baselines": baselines,
        **{name: ranking(0.05 + 0.04 * i) for i, name in enumerate(methods)},
        "booked_item": {name: booked(0.1 + 0.05 * i) for i, name in enumerate(methods)},
        "impression_rerank": {
            "n_cases": 80,
            "n_no_impressions": 5,
            "n_target_not_shown": 3,
            "methods": {
                "onscreen": rerank,
                "popularity": {**rerank, "mrr": 0.25},
                "session": {**rerank, "mrr": 0.35},
                "finetuned": {**rerank, "mrr": 0.4, "coverage": 0.9},
                "finetuned_triplet": {**rerank, "mrr": 0.38, "coverage": 0.9},
                "session+finetuned": {**rerank, "mrr": 0.45, "coverage": 0.9},
            },
        },
        "selection": {
            "split": SPLIT,
            "n_sessions": 120,
            "metric": "hr@10",
            "n_cases": 300,
            "scores": {"word2vec": ranking(0.17), "finetuned": ranking(0.19)},
            "chosen": "finetuned",
            "reason": "highest validation hr@10",
        },
        "previous": {
            "version": "v-previous",
            **ranking(0.18),
            "stability": {"overlap@10": 0.62, "n_common": 190, "n_items": 190},
        },
    }


@pytest.fixture(scope="module")
def data() -> ReportData:
    rng = np.random.default_rng(3)
    n_items = 200
    ids = ["<b>x</b>", *(f"item{i:03d}" for i in range(1, n_items))]
    counts = rng.integers(1, 1000, size=n_items).astype(np.int64)
    counts[0] = 5000  # the escaped id is the most frequent item, so it gets a neighbour table
    vectors = ItemVectors(
        ids=ids,
        vectors=normalize_rows(rng.normal(size=(n_items, 16))),
        counts=counts,
    )
    markets = {item: ["DE", "US", "<FR>"][i % 3] for i, item in enumerate(ids)}
    return ReportData(
        version="v-2026-01-08",
        metrics=full_metrics(),
        gate=GateVerdict(
            passed=True,
            metric="hr@10",
            value=0.21,
            required=0.15,
            reason=GATE_REASON,
            previous_version="v-previous",
        ),
        vectors=vectors,
        markets=markets,
        word2vec_history=[
            {"epoch": e, "loss": 1000.0 / e, "words_per_s": 5e4} for e in range(1, 6)
        ],
        finetune_history=FT_HISTORY,
        finetune_stats={
            "loss": "infonce",
            "best_epoch": 3,
            "epochs_run": 3,
            "val_recall_base": 0.05,
            "val_recall_best": 0.3,
            "val_source": "validation_sessions",
            "history": FT_HISTORY,
        },
        finetune_comparison={
            "finetuned_triplet": {
                "loss": "triplet",
                "best_epoch": 4,
                "epochs_run": 4,
                "val_recall_base": 0.05,
                "val_recall_best": 0.32,
                "val_source": "validation_sessions",
                "history": TRIPLET_HISTORY,
            }
        },
        params={"word2vec": {"vector_size": 16, "negative": 10}, "seed": 7},
        data_interval={"start": "2026-01-01", "end": "2026-01-09"},
    )


@pytest.fixture(scope="module")
def report(data: ReportData) -> str:
    return render_report(data, seed=0, n_examples=N_EXAMPLES, k=K)


def test_sections_in_order(report: str) -> None:
    assert parse(report).sections == SECTIONS


def test_every_plot_holds_data_and_a_png(report: str) -> None:
    plots = parse(report).plots
    assert sorted(plots) == sorted(PLOTS)
    for name, plot in plots.items():
        assert plot["points"] > 0, name
        prefix = "data:image/png;base64,"
        assert plot["src"].startswith(prefix), name
        assert base64.b64decode(plot["src"][len(prefix) :]).startswith(b"\x89PNG"), name


def test_projection_draws_every_item_when_under_the_cap(report: str, data: ReportData) -> None:
    assert parse(report).plots["projection"]["points"] == len(data.vectors.ids)
    capped = parse(render_report(data, max_points=50, n_examples=1))
    assert capped.plots["projection"]["points"] == 50


def test_summary_shows_the_gate_verdict_and_reason(report: str) -> None:
    summary = report.split('<section id="summary">')[1].split("</section>")[0]
    assert "passed" in summary
    assert "".join(parse(summary).text).count(GATE_REASON) == 1


def test_neighbour_tables_list_k_rows_without_the_query(report: str, data: ReportData) -> None:
    tables = parse(report).neighbour_tables
    top = [data.vectors.ids[i] for i in np.argsort(-data.vectors.counts, kind="stable")]
    assert [t["query"] for t in tables] == top[:N_EXAMPLES]
    for table in tables:
        assert len(table["rows"]) == K
        neighbours = [row[1] for row in table["rows"]]
        assert table["query"] not in neighbours
        assert len(set(neighbours)) == K
        scores = [float(row[2]) for row in table["rows"]]
        assert scores == sorted(scores, reverse=True)


def test_text_is_escaped(report: str) -> None:
    assert "<b>x</b>" not in report
    assert "&lt;b&gt;x&lt;/b&gt;" in report
    assert "<FR>" not in report and "&lt;FR&gt;" in report


def test_missing_parts_render_with_notes_and_no_empty_plots(data: ReportData) -> None:
    metrics = {
        k: v
        for k, v in full_metrics().items()
        if k
        not in ("impression_rerank", "previous", "booked_item", "selection", "finetuned_triplet")
    }
    sparse = replace(
        data,
        metrics=metrics,
        gate=replace(data.gate, previous_version=None),
        word2vec_history=[],
        finetune_history=[],
        finetune_stats={},
        finetune_comparison={},
        params=None,
        data_interval=None,
    )
    parsed = parse(render_report(sparse, k=K))
    assert parsed.sections == SECTIONS
    assert sorted(parsed.plots) == ["metrics", "projection"]
    assert all(plot["points"] > 0 for plot in parsed.plots.values())
    notes = " | ".join(parsed.empty_notes)
    for expected in (
        "first version: no predecessor",
        "booked-item metrics: not available",
        "no impressions",
        "word2vec: no training history",
        "fine-tune: no training history",
        "no previous version",
        "no configuration given",
        "selection on the validation split: not recorded",
        "no loss comparison",
    ):
        assert expected in notes


def test_bare_metrics_do_not_crash(data: ReportData) -> None:
    bare = replace(
        data,
        metrics={"n_cases": 0, "coverage": 0.0, "holdout": "last day"},
        gate=GateVerdict(passed=False, reason="no evaluation cases in the holdout"),
    )
    parsed = parse(render_report(bare, n_examples=1, k=3))
    assert parsed.sections == SECTIONS
    assert "metrics" not in parsed.plots
    assert "failed" in "".join(parsed.text)


def test_comparison_variant_is_a_candidate_everywhere(report: str, data: ReportData) -> None:
    assert candidates(data.metrics) == ["word2vec", "finetuned", "finetuned_triplet"]
    metric_rows = [cells[0] for _, cells in table_rows(section(report, "metrics"))]
    assert "finetuned_triplet (loss comparison)" in metric_rows
    assert "finetuned (published)" in metric_rows
    plots = parse(report).plots
    assert plots["metrics"]["points"] == 2 * (6 + 1)  # 6 methods and the previous version
    assert "finetuned_triplet" in plots["by_position"]["series"]
    impression_rows = [cells[0] for _, cells in table_rows(section(report, "impressions"))]
    assert "finetuned_triplet" in impression_rows


def test_selection_marks_the_chosen_candidate_on_the_validation_split(report: str) -> None:
    fragment = section(report, "selection")
    rows = table_rows(fragment)
    assert [cells[0] for _, cells in rows] == ["word2vec", "finetuned (chosen)"]
    assert [cells[0] for cls, cells in rows if cls == "published"] == ["finetuned (chosen)"]
    assert float(rows[1][1][1]) == pytest.approx(0.19)  # validation HR@10, not the test one
    text = "".join(parse(fragment).text)
    assert SPLIT in text
    assert "120 validation sessions" in text and "300 next-item cases" in text
    assert "Every other figure in this report is on the test split" in text
    summary = "".join(parse(section(report, "summary")).text)
    assert "finetuned (chosen on the validation split)" in summary


def test_loss_comparison_table_and_curves_of_both_runs(report: str, data: ReportData) -> None:
    fragment = section(report, "loss_comparison")
    rows = [cells for _, cells in table_rows(fragment)]
    assert [row[:2] for row in rows] == [
        ["finetuned (configured, published)", "InfoNCE"],
        ["finetuned_triplet (comparison)", "triplet"],
    ]
    for row, name in zip(rows, ("finetuned", "finetuned_triplet"), strict=True):
        assert float(row[2]) == pytest.approx(data.metrics[name]["hr@10"])  # test HR@10
    assert rows[1][6:] == ["0.0500", "0.3200", "4", "4"]  # val base, best, best epoch, epochs
    plot = parse(report).plots["loss_comparison"]
    assert plot["series"] == ["InfoNCE (finetuned)", "triplet (finetuned_triplet)"]
    # each curve: the base vectors at epoch 0, then one point per epoch
    assert plot["points"] == (1 + len(FT_HISTORY)) + (1 + len(TRIPLET_HISTORY))


def test_loss_comparison_read_from_the_finetune_stats(data: ReportData) -> None:
    """The manifest's whole ``finetune`` dict alone (its "comparison" key) is enough; with the
    configured loss triplet the comparison run is InfoNCE and comes first."""
    comparison = data.finetune_comparison["finetuned_triplet"]
    metrics = {k: v for k, v in full_metrics().items() if k != "finetuned_triplet"}
    metrics["finetuned_infonce"] = metrics["finetuned"]
    stats = {
        **data.finetune_stats,
        "loss": "triplet",
        "comparison": {"finetuned_infonce": {**comparison, "loss": "infonce"}},
    }
    flipped = replace(data, metrics=metrics, finetune_stats=stats, finetune_comparison={})
    fragment = loss_comparison_section(flipped)
    rows = [cells[:2] for _, cells in table_rows(fragment)]
    assert rows == [
        ["finetuned_infonce (comparison)", "InfoNCE"],
        ["finetuned (configured, published)", "triplet"],
    ]
    assert parse(fragment).plots["loss_comparison"]["points"] == 2 + len(FT_HISTORY) + len(
        TRIPLET_HISTORY
    )


def test_without_comparison_or_selection_the_sections_say_so(data: ReportData) -> None:
    # built as embedding.stages.publish.version_report built it before these fields existed
    bare = ReportData(
        version=data.version,
        metrics={
            k: v for k, v in full_metrics().items() if k not in ("selection", "finetuned_triplet")
        },
        gate=data.gate,
        vectors=data.vectors,
        markets=data.markets,
        finetune_history=FT_HISTORY,
    )
    parsed = parse(loss_comparison_section(bare))
    assert parsed.plots == {}
    assert parsed.empty_notes == [
        "no loss comparison: only the configured loss (InfoNCE) was trained"
    ]
    parsed = parse(selection_section(bare.metrics))
    assert parsed.empty_notes == [
        "selection on the validation split: not recorded (older manifest)"
    ]
