"""Same-market hard negatives for the fine-tune.

Input: the vocabulary's ids (row order) and each item's market. Output: a ``MarketIndex``
(rows grouped by market, built once per run) and, per batch, (B, n) rows drawn uniformly from
each positive's market, the positive itself excluded (-1 where there is none to draw).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class MarketIndex:
    """Vocabulary rows grouped by market, for vectorised same-market sampling.

    ``items`` holds the rows of every item with a market, one contiguous block per market; for
    each vocabulary row, ``start`` and ``size`` locate its market's block (size 0: no market) and
    ``position`` is its own offset inside that block."""

    items: Tensor  # (M,) int64
    start: Tensor  # (N,) int64
    size: Tensor  # (N,) int64
    position: Tensor  # (N,) int64
    n_markets: int = 0

    def to(self, device: torch.device | str) -> MarketIndex:
        return MarketIndex(
            self.items.to(device),
            self.start.to(device),
            self.size.to(device),
            self.position.to(device),
            self.n_markets,
        )


def n_hard_negatives(ratio: float, batch: int) -> int:
    """Hard negatives per row of a batch of ``batch`` rows: ceil(ratio * (batch - 1))."""
    return math.ceil(round(ratio * (batch - 1), 9)) if ratio > 0 else 0


def _has_market(market: object) -> bool:
    if market is None or market == "":
        return False
    return not (isinstance(market, float) and math.isnan(market))


def build_market_index(
    ids: Sequence[str], markets: Mapping[str, str | None], device: torch.device | str = "cpu"
) -> MarketIndex:
    """Per-market arrays of the vocabulary ``ids`` (row order), built once per run."""
    codes = np.full(len(ids), -1, dtype=np.int64)
    names: dict[object, int] = {}
    for row, item in enumerate(ids):
        market = markets.get(item)
        if _has_market(market):
            codes[row] = names.setdefault(market, len(names))
    with_market = np.flatnonzero(codes >= 0)
    order = with_market[np.argsort(codes[with_market], kind="stable")]  # grouped by market
    sizes = np.bincount(codes[with_market], minlength=len(names)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    start = np.zeros(len(ids), dtype=np.int64)
    size = np.zeros(len(ids), dtype=np.int64)
    position = np.zeros(len(ids), dtype=np.int64)
    start[with_market] = starts[codes[with_market]]
    size[with_market] = sizes[codes[with_market]]
    position[order] = np.arange(order.size, dtype=np.int64) - start[order]
    index = MarketIndex(
        torch.from_numpy(order.astype(np.int64)),
        torch.from_numpy(start),
        torch.from_numpy(size),
        torch.from_numpy(position),
        len(names),
    )
    return index.to(device)


def sample_hard_negatives(
    index: MarketIndex, positive_ids: Tensor, n: int, generator: torch.Generator
) -> Tensor:
    """(B, n) rows drawn uniformly, with replacement, from each positive's market, the positive
    itself excluded; -1 where its market holds no other item (or it has no market).

    Vectorised: a uniform draw per slot times (market size - 1) gives an offset into the
    market's block, shifted past the positive's own position. ``generator`` is a CPU generator
    (the draws are moved to the index's device), so runs are reproducible on any device."""
    batch = positive_ids.size(0)
    device = index.items.device
    uniform = torch.rand((batch, n), generator=generator).to(device)  # (B, n)
    if n == 0 or index.items.numel() == 0:
        return torch.full((batch, n), -1, dtype=torch.long, device=device)
    pos = positive_ids.to(device)
    others = (index.size[pos] - 1)[:, None]  # (B, 1) candidates besides the positive
    offset = (uniform * others).long()
    offset = torch.minimum(offset, (others - 1).clamp(min=0))
    offset = offset + (offset >= index.position[pos][:, None]).long()  # skip the positive
    valid = others > 0
    slot = torch.where(valid, index.start[pos][:, None] + offset, torch.zeros_like(offset))
    return torch.where(valid, index.items[slot], torch.full_like(slot, -1))
