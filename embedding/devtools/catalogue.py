"""The synthetic log's world: profiles (sizes, Zipf exponent, session and browsing habits) and
the catalogue drawn from one (item ids and weights, markets and clusters). Nothing is read or
written; the same profile and seed give the same catalogue, and its ground truth table (item,
market, cluster, weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.core.errors import InputError

ITEM_ID_SPACE = 1_000_000  # item ids are "i" + 6 digits drawn from this range


@dataclass(frozen=True)
class Profile:
    """Shape of the synthetic world and of its users' sessions.

    Items number ``n_markets * clusters_per_market * items_per_cluster``. A session's next item
    stays in the current cluster with ``p_stay_cluster``, moves to another cluster of the current
    market with ``p_switch_cluster``, else to another market (the remaining share).
    """

    name: str
    n_markets: int = 20
    clusters_per_market: int = 50
    items_per_cluster: int = 20
    zipf_exponent: float = 1.1  # item weight = 1 / rank**exponent, ranks randomly permuted
    p_stay_cluster: float = 0.6
    p_switch_cluster: float = 0.3  # p_switch_market = 1 - p_stay_cluster - p_switch_cluster
    mean_session_events: float = 8.0  # min_session_events + geometric extra
    min_session_events: int = 2
    mean_gap_s: float = 90.0  # gap between events of a session: min_gap_s + exponential extra
    min_gap_s: float = 30.0  # real browsing dwells at least Airbnb's short-dwell threshold
    p_accidental: float = 0.1  # chance of an accidental click (random item, 2-20 s dwell) per step
    accidental_dwell_s: tuple[float, float] = (2.0, 20.0)
    max_gap_s: float = 1200.0  # gap cap; stays under the 30 min sessionization default
    min_pause_s: float = 3600.0  # between a user's sessions: at least this ...
    mean_pause_s: float = 6 * 3600.0  # ... and this on average (min + exponential extra)
    book_share: float = 0.15  # sessions that end with a booking
    click_share: float = 0.2  # non-booking events that are clicks rather than views

    def __post_init__(self) -> None:
        sizes = (self.n_markets, self.clusters_per_market, self.items_per_cluster)
        if min(sizes) < 1:
            raise InputError(f"profile {self.name!r}: markets, clusters and items must be >= 1")
        if self.n_items > ITEM_ID_SPACE:
            raise InputError(f"profile {self.name!r}: {self.n_items} items exceed {ITEM_ID_SPACE}")
        if not 0.0 <= self.p_stay_cluster + self.p_switch_cluster <= 1.0:
            raise InputError(f"profile {self.name!r}: transition probabilities exceed 1")
        if self.min_session_events < 1 or self.mean_session_events < self.min_session_events:
            raise InputError(f"profile {self.name!r}: need 1 <= min_session_events <= mean")
        if not 0.0 < self.max_gap_s < self.min_pause_s <= self.mean_pause_s:
            raise InputError(f"profile {self.name!r}: need 0 < max_gap_s < min_pause_s <= mean")
        if not 0.0 <= self.min_gap_s < self.mean_gap_s <= self.max_gap_s:
            raise InputError(
                f"profile {self.name!r}: need 0 <= min_gap_s < mean_gap_s <= max_gap_s"
            )
        if not 0.0 <= self.p_accidental < 1.0:
            raise InputError(f"profile {self.name!r}: p_accidental must be in [0, 1)")

    @property
    def n_clusters(self) -> int:
        return self.n_markets * self.clusters_per_market

    @property
    def n_items(self) -> int:
        return self.n_clusters * self.items_per_cluster


PROFILES: dict[str, Profile] = {
    # 20 markets x 50 clusters x 20 items = 20,000 items: most items are seen often.
    "standard": Profile(name="standard"),
    # 20 markets x 500 clusters x 20 items = 200,000 items: at ~200k events most seen items
    # appear fewer than 5 times (a long tail, as in real catalogues).
    "sparse": Profile(name="sparse", clusters_per_market=500),
}


@dataclass(frozen=True)
class Catalogue:
    """The item world: index ``g`` is market ``g // (C*I)``, cluster ``g // I`` (global ids)."""

    profile: Profile
    item_numbers: np.ndarray  # (n_items,) int64, the 6 digits of each item's id
    item_weights: np.ndarray  # (n_items,) float64, 1 / rank**zipf_exponent

    def item_ids(self) -> list[str]:
        return [f"i{n:06d}" for n in self.item_numbers.tolist()]

    def market_names(self) -> list[str]:
        width = max(2, len(str(self.profile.n_markets - 1)))
        return [f"m{m:0{width}d}" for m in range(self.profile.n_markets)]

    def cluster_names(self) -> list[str]:
        """Global cluster index -> "m07/c012"."""
        width = max(3, len(str(self.profile.clusters_per_market - 1)))
        markets = self.market_names()
        per_market = self.profile.clusters_per_market
        return [
            f"{markets[c // per_market]}/c{c % per_market:0{width}d}"
            for c in range(self.profile.n_clusters)
        ]


def build_catalogue(profile: Profile, seed: int) -> Catalogue:
    """Draw item ids and Zipf weights; depends only on the profile and seed, not on the size."""
    rng = np.random.default_rng(seed)
    n_items = profile.n_items
    ranks = rng.permutation(n_items) + 1  # (n_items,) a random rank per item
    weights = 1.0 / ranks.astype(np.float64) ** profile.zipf_exponent
    # Sampled without replacement from a larger space so ids reveal neither structure nor size.
    numbers = rng.choice(ITEM_ID_SPACE, size=n_items, replace=False).astype(np.int64)
    return Catalogue(profile=profile, item_numbers=numbers, item_weights=weights)


GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("market", pa.string()),
        ("cluster", pa.string()),
        ("weight", pa.float64()),
    ]
)


def build_ground_truth(catalogue: Catalogue) -> pa.Table:
    """Every catalogue item with its market, cluster and Zipf weight, sorted by item_id."""
    profile = catalogue.profile
    order = np.argsort(catalogue.item_numbers, kind="stable")
    index = np.arange(profile.n_items, dtype=np.int64)[order]
    markets = pa.array(catalogue.market_names(), pa.string())
    clusters = pa.array(catalogue.cluster_names(), pa.string())
    items_per_market = profile.clusters_per_market * profile.items_per_cluster
    columns = [
        pc.take(pa.array(catalogue.item_ids(), pa.string()), pa.array(index)),
        pc.take(markets, pa.array(index // items_per_market)),
        pc.take(clusters, pa.array(index // profile.items_per_cluster)),
        pa.array(catalogue.item_weights[order], pa.float64()),
    ]
    return pa.Table.from_arrays(columns, schema=GROUND_TRUTH_SCHEMA)
