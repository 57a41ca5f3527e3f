"""``ItemVectors``: item ids, their L2-normalised vectors and training counts, the one in-memory
shape every stage, the publisher and the service exchange."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ItemVectors:
    """Queryable vectors, apart from the trainable model (as gensim's KeyedVectors)."""

    ids: list[str]
    vectors: np.ndarray  # (n_items, dim) float32, rows L2-normalised
    counts: np.ndarray  # (n_items,) int64, occurrences in the training corpus

    def __post_init__(self) -> None:
        assert self.vectors.shape[0] == len(self.ids) == self.counts.shape[0]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def index(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.ids)}


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
