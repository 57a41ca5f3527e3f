"""The report's sections on the vectors themselves: a 2-D PCA projection coloured by market
and the nearest neighbours of the most frequent items.

Input: a ``ReportData`` (its ``ItemVectors`` and each item's market) and the sampling knobs.
Output: one ``<section>`` HTML string per section function; ``pca_2d`` and
``nearest_neighbours`` are the pure numeric parts.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from embedding.quality.report_charts import group_scatter
from embedding.quality.report_data import ReportData
from embedding.quality.report_html import empty_note, esc, html_section, html_table
from embedding.vectors.item_vectors import ItemVectors

N_MARKET_COLOURS = 10  # the most frequent markets get a colour each, the rest are grey


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
        return html_section(
            "projection", title, empty_note("too few items or dimensions to project")
        )
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_items, size=min(max_points, n_items), replace=False))
    coords, explained = pca_2d(vectors.vectors[rows])
    labels = [data.markets.get(vectors.ids[r]) for r in rows]
    ranked = Counter(m for m in labels if m is not None).most_common()
    top = [m for m, _ in sorted(ranked, key=lambda mc: (-mc[1], mc[0]))[:N_MARKET_COLOURS]]
    caption = (
        f"{len(rows)} of {n_items} items (uniform sample, seed {seed}), coloured by market: "
        f"the {len(top)} most frequent markets, the rest grey."
    )
    chart = group_scatter(
        "projection",
        coords,
        labels,
        top,
        f"PC1 ({explained[0]:.1%} of variance)",
        f"PC2 ({explained[1]:.1%} of variance)",
        caption,
    )
    return html_section("projection", title, chart)


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
        return html_section("neighbours", title, empty_note("too few items for neighbours"))
    by_count = np.lexsort((np.arange(len(vectors.ids)), -vectors.counts))[:n_examples]
    parts = [f"<p>Exact cosine, top {k}, the query item excluded.</p>"]
    for row in by_count:
        item = vectors.ids[row]
        parts.append(
            f"<h3>{esc(item)} <small>(market {esc(data.markets.get(item) or '–')}, "
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
        parts.append(html_table(("rank", "item", "cosine", "market", "count"), rows))
    return html_section("neighbours", title, "\n".join(parts))
