"""Tests for the contrastive fine-tune: the loss on plain tensors, recall@k, and ``finetune()`` on
a small synthetic table (real torch on CPU)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embedding.core.config import FinetuneParams
from embedding.train.finetune import FinetuneStats, finetune, recall_at_k
from embedding.train.finetune_state import lr_factor
from embedding.train.losses import contrastive_logits, info_nce, triplet_loss
from embedding.train.negatives import build_market_index, sample_hard_negatives
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

N_ITEMS, DIM = 200, 16
N_PAIRED = 50  # items 0..49 appear in booking pairs, 50..199 never do
CLUSTER = 5  # pairs join items of the same block of 5 among 0..49
IDS = [f"i{i:03d}" for i in range(N_ITEMS)]
PARAMS = FinetuneParams(
    epochs=6, batch_size=64, lr=0.01, anchor_weight=1.0, val_fraction=0.2, device="cpu"
)

small_floats = st.floats(-1.0, 1.0, allow_nan=False, width=32)


def untimed(history: list[dict]) -> list[dict]:
    """History entries without the wall-clock throughput, which varies run to run."""
    return [{k: v for k, v in entry.items() if k != "pairs_per_s"} for entry in history]


def random_vectors(seed: int = 0) -> ItemVectors:
    rng = np.random.default_rng(seed)
    vectors = normalize_rows(rng.normal(size=(N_ITEMS, DIM)))
    return ItemVectors(ids=IDS, vectors=vectors, counts=np.ones(N_ITEMS, dtype=np.int64))


def clustered_vectors(seed: int = 0) -> ItemVectors:
    """Each block of CLUSTER items among 0..49 shares a direction: the base already knows them."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(N_ITEMS, DIM))
    centres = rng.normal(size=(N_PAIRED // CLUSTER, DIM))
    vectors[:N_PAIRED] = np.repeat(centres, CLUSTER, axis=0) + 0.01 * vectors[:N_PAIRED]
    return ItemVectors(IDS, normalize_rows(vectors), np.ones(N_ITEMS, dtype=np.int64))


def cluster_pairs(n_pairs: int = 300, seed: int = 0) -> tuple[list[str], list[str]]:
    """(context, booked) ids, two distinct items of one block of CLUSTER among items 0..49."""
    rng = np.random.default_rng(seed)
    context, booked = [], []
    for _ in range(n_pairs):
        block = int(rng.integers(0, N_PAIRED // CLUSTER))
        a, b = rng.choice(CLUSTER, size=2, replace=False)
        context.append(IDS[block * CLUSTER + a])
        booked.append(IDS[block * CLUSTER + b])
    return context, booked


@pytest.fixture(scope="module")
def tuned_run() -> tuple[ItemVectors, ItemVectors, FinetuneStats]:
    base = random_vectors()
    tuned, stats = finetune(base, *cluster_pairs(), PARAMS, seed=1)
    return base, tuned, stats


# --- info_nce -------------------------------------------------------------------------------


def test_info_nce_matches_a_hand_computation() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    temperature = 0.5
    s = 1 / math.sqrt(2)
    # cosines of each anchor (row) to each positive (column); row i's answer is column i
    cosines = [[1.0, s, 0.0], [0.0, s, 1.0], [s, 1.0, s]]
    per_row = []
    for i, row in enumerate(cosines):
        denominator = sum(math.exp(c / temperature) for c in row)
        per_row.append(-math.log(math.exp(row[i] / temperature) / denominator))
    expected = sum(per_row) / 3
    loss = info_nce(anchors, positives, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_ignores_vector_length() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    scaled = info_nce(anchors * 3.0, positives * 0.5, 0.5)
    assert scaled.item() == pytest.approx(info_nce(anchors, positives, 0.5).item(), rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), batch=st.integers(2, 6), dim=st.integers(2, 4))
def test_info_nce_unchanged_when_pairs_are_permuted_together(
    data: st.DataObject, batch: int, dim: int
) -> None:
    anchors = data.draw(arrays(np.float32, (batch, dim), elements=small_floats), "anchors")
    positives = data.draw(arrays(np.float32, (batch, dim), elements=small_floats), "positives")
    ids = data.draw(arrays(np.int64, batch, elements=st.integers(0, 3)), "positive_ids")
    perm = torch.tensor(data.draw(st.permutations(range(batch)), "perm"))
    a, p, i = torch.from_numpy(anchors), torch.from_numpy(positives), torch.from_numpy(ids)
    for temperature in (0.05, 1.0):
        plain = info_nce(a, p, temperature)
        assert torch.allclose(info_nce(a[perm], p[perm], temperature), plain, rtol=1e-5, atol=1e-5)
        masked = info_nce(a, p, temperature, positive_ids=i)
        permuted = info_nce(a[perm], p[perm], temperature, positive_ids=i[perm])
        assert torch.allclose(permuted, masked, rtol=1e-5, atol=1e-5)


def test_info_nce_masks_duplicate_positives() -> None:
    anchors = torch.tensor([[1.0, 0.2], [0.9, 0.1], [-0.3, 1.0], [0.1, -1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, -0.9]])  # rows 0, 1 repeat
    ids = torch.tensor([7, 7, 3, 5])
    unmasked = info_nce(anchors, positives, 0.2)
    masked = info_nce(anchors, positives, 0.2, positive_ids=ids)
    assert masked.item() < unmasked.item()
    # by hand: rows 0 and 1 no longer see the other copy of item 7; rows 2 and 3 see all four
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / 0.2
    visible = [[0, 2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    per_row = [
        torch.logsumexp(logits[i, cols], dim=0) - logits[i, i] for i, cols in enumerate(visible)
    ]
    assert masked.item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-6)


def test_info_nce_mask_is_a_no_op_with_distinct_positives() -> None:
    anchors = torch.tensor([[1.0, 0.2], [0.9, 0.1], [-0.3, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    masked = info_nce(anchors, positives, 0.2, positive_ids=torch.tensor([1, 2, 3]))
    assert masked.item() == pytest.approx(info_nce(anchors, positives, 0.2).item(), rel=1e-6)


# --- recall_at_k ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n_items=st.integers(3, 12), dim=st.integers(2, 4))
def test_recall_at_k_never_falls_as_k_grows(data: st.DataObject, n_items: int, dim: int) -> None:
    table = data.draw(arrays(np.float32, (n_items, dim), elements=small_floats), "table")
    n_pairs = data.draw(st.integers(1, 8), "n_pairs")
    index = st.integers(0, n_items - 1)
    context = data.draw(arrays(np.int64, n_pairs, elements=index), "context")
    booked = data.draw(arrays(np.int64, n_pairs, elements=index), "booked")
    chunk = data.draw(st.integers(1, 4), "chunk")
    args = torch.from_numpy(table), torch.from_numpy(context), torch.from_numpy(booked)
    recalls = [recall_at_k(*args, k=k, chunk=chunk) for k in range(1, n_items + 2)]
    assert all(0.0 <= r <= 1.0 for r in recalls)
    assert recalls == sorted(recalls)
    if all(c != b for c, b in zip(context, booked, strict=True)):
        assert recalls[n_items - 2] == 1.0  # k = n_items - 1 covers every other item


def test_recall_at_k_by_hand() -> None:
    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    context = torch.tensor([0, 0, 2])
    booked = torch.tensor([1, 3, 1])  # ranks 0, 2 and 0 (the query itself excluded)
    assert recall_at_k(table, context, booked, k=1) == pytest.approx(2 / 3)
    assert recall_at_k(table, context, booked, k=2) == pytest.approx(2 / 3)
    assert recall_at_k(table, context, booked, k=3) == 1.0
    assert recall_at_k(table, torch.tensor([], dtype=torch.long), booked[:0], k=3) == 0.0


# --- finetune() -----------------------------------------------------------------------------


def test_finetune_keeps_ids_shape_counts_and_unit_norm(tuned_run) -> None:
    base, tuned, stats = tuned_run
    assert tuned.ids == base.ids
    assert tuned.vectors.shape == base.vectors.shape
    assert tuned.vectors.dtype == np.float32
    np.testing.assert_array_equal(tuned.counts, base.counts)
    np.testing.assert_allclose(np.linalg.norm(tuned.vectors, axis=1), 1.0, atol=1e-5)
    assert stats.n_pairs == 300
    assert (stats.n_train, stats.n_val) == (240, 60)
    assert stats.skipped is None
    assert stats.device == "cpu"


def test_items_without_pairs_keep_their_base_vectors(tuned_run) -> None:
    base, tuned, _ = tuned_run
    np.testing.assert_allclose(tuned.vectors[N_PAIRED:], base.vectors[N_PAIRED:], rtol=0, atol=1e-6)


def test_items_without_pairs_keep_their_base_vectors_exactly(tuned_run) -> None:
    base, tuned, _ = tuned_run
    np.testing.assert_array_equal(tuned.vectors[N_PAIRED:], base.vectors[N_PAIRED:])


def test_moved_items_stay_near_their_base_vectors(tuned_run) -> None:
    base, tuned, stats = tuned_run
    assert stats.best_epoch > 0, "the fixture should actually move vectors"
    cosine = np.sum(tuned.vectors[:N_PAIRED] * base.vectors[:N_PAIRED], axis=1)
    assert not np.allclose(cosine, 1.0, atol=1e-3)  # some items did move
    assert cosine.min() > 0.5


def test_val_recall_never_below_base(tuned_run) -> None:
    _, _, stats = tuned_run
    assert stats.val_recall_best >= stats.val_recall_base
    assert stats.val_recall_best > stats.val_recall_base  # planted blocks are learnable
    assert stats.epochs_run == len(stats.history) >= 1
    best = max(h["val_recall"] for h in stats.history)
    assert stats.val_recall_best == max(best, stats.val_recall_base)


def test_epoch_zero_counts_when_training_cannot_improve() -> None:
    base = clustered_vectors()
    params = PARAMS.model_copy(update={"patience": 2})
    tuned, stats = finetune(base, *cluster_pairs(), params, seed=1)
    assert stats.val_recall_base == 1.0  # base already ranks every block mate in the top 10
    assert stats.best_epoch == 0
    assert stats.val_recall_best == stats.val_recall_base
    assert stats.epochs_run == 2  # early stop after `patience` epochs without improvement
    np.testing.assert_allclose(tuned.vectors, base.vectors, rtol=0, atol=1e-6)


def test_same_seed_gives_identical_vectors(tuned_run) -> None:
    base, tuned, stats = tuned_run
    again, again_stats = finetune(base, *cluster_pairs(), PARAMS, seed=1)
    np.testing.assert_array_equal(again.vectors, tuned.vectors)
    assert untimed(again_stats.history) == untimed(stats.history)


def test_pairs_with_unknown_items_are_skipped() -> None:
    base = random_vectors()
    context, booked = cluster_pairs(40)
    with_unknown = [*context, "nope", IDS[0]], [*booked, IDS[1], "nope"]
    _, stats = finetune(base, *with_unknown, PARAMS.model_copy(update={"epochs": 1}), seed=1)
    assert stats.n_pairs == 40


@pytest.mark.parametrize("n_known", [0, 3])
def test_too_few_usable_pairs_returns_base_unchanged(n_known: int) -> None:
    base = random_vectors()
    context, booked = cluster_pairs(n_known)
    context += ["unknown-a", IDS[0], "unknown-c"]  # never usable: one side is not in the table
    booked += [IDS[1], "unknown-b", "unknown-d"]
    tuned, stats = finetune(base, context, booked, PARAMS, seed=1)
    assert tuned is base
    assert stats.n_pairs == n_known
    assert stats.skipped is not None
    assert str(n_known) in stats.skipped
    assert stats.history == []


# --- extensions: markets, logQ, triplet, temperature, queue, schedule, validation ------------

# markets: blocks of 10 consecutive items, 4 markets; every 25th item has none
MARKETS: dict[str, str | None] = {
    IDS[i]: (None if i % 25 == 24 else f"m{(i // 10) % 4}") for i in range(N_ITEMS)
}
ALL_ON = PARAMS.model_copy(
    update={
        "symmetric": True,
        "learn_temperature": True,
        "hard_negative_ratio": 0.25,
        "logq_correction": True,
        "queue_size": 64,
        "momentum": 0.9,
        "weight_decay": 0.01,
        "lr_schedule": "cosine",
        "warmup_epochs": 1.0,
        "grad_clip": 0.5,
    }
)


def test_hard_negatives_come_from_the_booked_items_market_and_never_equal_it() -> None:
    markets = {**MARKETS, IDS[199]: "solo"}  # a market with a single item: nothing to draw
    index = build_market_index(IDS, markets)
    positives = torch.arange(N_ITEMS).repeat(3)
    drawn = sample_hard_negatives(index, positives, 7, torch.Generator().manual_seed(0))
    assert drawn.shape == (3 * N_ITEMS, 7)
    assert drawn.dtype == torch.long
    for row, positive in zip(drawn.tolist(), positives.tolist(), strict=True):
        market = markets[IDS[positive]]
        if market is None or market == "solo":
            assert row == [-1] * 7
        else:
            assert all(d != positive and markets[IDS[d]] == market for d in row)
    # uniform over the rest of the market: many draws for item 0 reach every other member
    many = sample_hard_negatives(index, torch.zeros(1, dtype=torch.long), 2000, torch.Generator())
    members = {i for i in range(N_ITEMS) if markets[IDS[i]] == markets[IDS[0]]} - {0}
    assert set(many.flatten().tolist()) == members
    again = sample_hard_negatives(index, positives, 7, torch.Generator().manual_seed(0))
    assert torch.equal(again, drawn)  # seeded generator: reproducible


def test_logq_correction_subtracts_log_q_on_in_batch_columns_only() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    ids = torch.tensor([0, 1, 2])
    hard = torch.tensor([[[0.5, 0.5], [1.0, -1.0]], [[0.2, 1.0], [0.0, 1.0]], [[1.0, 0.3]] * 2])
    hard_ids = torch.tensor([[5, 6], [7, -1], [8, 2]])  # -1: empty slot; 2: row 2's positive
    queue = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    queue_ids = torch.tensor([10, 1])  # 1: row 1's positive
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    extra = {"hard": hard, "hard_ids": hard_ids, "queue": queue, "queue_ids": queue_ids}
    raw = contrastive_logits(anchors, positives, 0.5, ids, **extra)
    corrected = contrastive_logits(anchors, positives, 0.5, ids, log_q=log_q, **extra)
    assert corrected.shape == (3, 3 + 2 + 2)
    s = 1 / math.sqrt(2)
    by_hand = torch.tensor([[1.0, s, 0.0], [0.0, s, 1.0], [s, 1.0, s]]) / 0.5
    torch.testing.assert_close(raw[:, :3], by_hand)
    torch.testing.assert_close(corrected[:, :3], by_hand - log_q[None, :])  # diagonal included
    assert torch.equal(corrected[:, 3:], raw[:, 3:])  # hard and queue columns untouched
    assert torch.isinf(raw[1, 4]) and torch.isinf(raw[2, 4]) and torch.isinf(raw[1, 6])
    assert torch.isfinite(raw[0]).all()
    # the loss is the cross-entropy of the corrected logits, row i's answer in column i
    loss = info_nce(anchors, positives, 0.5, ids, log_q=log_q, **extra)
    expected = torch.stack(
        [torch.logsumexp(r[r.isfinite()], 0) - r[i] for i, r in enumerate(corrected)]
    )
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_queue_adds_its_columns_next_to_in_batch_and_hard_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, n_hard, n_queue, dim = 4, 2, 3, 5
    anchors, positives = (
        torch.randn(batch, dim, generator=gen),
        torch.randn(batch, dim, generator=gen),
    )
    hard = torch.randn(batch, n_hard, dim, generator=gen)
    queue = torch.randn(n_queue, dim, generator=gen)
    ids = torch.tensor([0, 1, 2, 3])
    logits = contrastive_logits(
        anchors,
        positives,
        0.2,
        ids,
        hard=hard,
        hard_ids=torch.full((batch, n_hard), 9),
        queue=queue,
        queue_ids=torch.tensor([3, 8, 9]),
    )
    assert logits.shape == (batch, batch + n_hard + n_queue)
    assert torch.isinf(logits[3, batch + n_hard]) and torch.isfinite(logits[:3]).all()
    expected = F.normalize(anchors, dim=-1) @ F.normalize(queue, dim=-1).T / 0.2
    torch.testing.assert_close(logits[:3, batch + n_hard :], expected[:3])


def test_triplet_loss_by_hand() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    s = 1 / math.sqrt(2)
    # cosines [[1, s, 0], [0, s, 1], [s, 1, s]]: hardest negatives s, 1, 1
    plain = triplet_loss(anchors, positives, 0.2)
    assert plain.item() == pytest.approx((0.0 + 2 * (0.2 - s + 1.0)) / 3, rel=1e-6)
    # rows 1 and 2 share a positive: each other's column is masked (hardest: 0 and s)
    masked = triplet_loss(anchors, positives, 0.2, torch.tensor([7, 3, 3]))
    assert masked.item() == pytest.approx((0.0 + 0.0 + 0.2) / 3, rel=1e-6)
    # a hard negative almost on row 0's anchor (cos 10/sqrt(101)); row 1's equals its positive
    hard = torch.tensor([[[10.0, 1.0]], [[5.0, 5.0]], [[-1.0, 0.0]]])
    with_hard = triplet_loss(
        anchors,
        positives,
        0.2,
        torch.tensor([7, 3, 3]),
        hard=hard,
        hard_ids=torch.tensor([[4], [3], [5]]),
    )
    row0 = 0.2 - 1.0 + 10 / math.sqrt(101)
    assert with_hard.item() == pytest.approx((row0 + 0.0 + 0.2) / 3, rel=1e-6)


def test_finetune_triplet_improves_val_recall() -> None:
    base = random_vectors()
    tuned, stats = finetune(base, *cluster_pairs(), PARAMS, seed=1, loss="triplet")
    assert stats.loss == "triplet"
    assert stats.val_recall_best > stats.val_recall_base
    assert stats.best_epoch > 0
    np.testing.assert_array_equal(tuned.vectors[N_PAIRED:], base.vectors[N_PAIRED:])


def test_unknown_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="hinge"):
        finetune(random_vectors(), *cluster_pairs(10), PARAMS, seed=1, loss="hinge")


def test_learned_temperature_moves_and_is_reported() -> None:
    params = PARAMS.model_copy(update={"learn_temperature": True, "patience": 100})
    _, stats = finetune(random_vectors(), *cluster_pairs(), params, seed=1)
    temperatures = [h["temperature"] for h in stats.history]
    assert stats.temperature_final == temperatures[-1]
    assert stats.temperature_final != pytest.approx(params.temperature, abs=1e-4)
    assert all(t >= 1 / 100 for t in temperatures)  # scale clamped at 100
    fixed = finetune(random_vectors(), *cluster_pairs(40), PARAMS, seed=1)[1]
    assert fixed.temperature_final == PARAMS.temperature
    assert {h["temperature"] for h in fixed.history} == {PARAMS.temperature}


def test_finetune_with_queue_runs_and_reports_it() -> None:
    params = PARAMS.model_copy(update={"queue_size": 32})
    base = random_vectors()
    tuned, stats = finetune(base, *cluster_pairs(), params, seed=1)
    assert stats.queue_size == 32
    assert stats.val_recall_best > stats.val_recall_base
    np.testing.assert_array_equal(tuned.vectors[N_PAIRED:], base.vectors[N_PAIRED:])


@pytest.fixture(scope="module")
def all_on_run() -> tuple[ItemVectors, ItemVectors, FinetuneStats]:
    base = random_vectors()
    tuned, stats = finetune(base, *cluster_pairs(), ALL_ON, seed=1, markets=MARKETS)
    return base, tuned, stats


def test_all_options_on_keeps_unpaired_rows_bit_identical(all_on_run) -> None:
    base, tuned, stats = all_on_run
    assert stats.n_hard_negatives == math.ceil(0.25 * (ALL_ON.batch_size - 1))  # 16
    assert stats.queue_size == ALL_ON.queue_size
    assert stats.best_epoch > 0
    # hard negatives were drawn among items 50..199 too, but only ever read, never moved
    np.testing.assert_array_equal(tuned.vectors[N_PAIRED:], base.vectors[N_PAIRED:])
    assert not np.array_equal(tuned.vectors[:N_PAIRED], base.vectors[:N_PAIRED])


def test_all_options_on_improves_val_recall(all_on_run) -> None:
    _, _, stats = all_on_run
    assert stats.val_recall_best > stats.val_recall_base
    assert stats.temperature_final != pytest.approx(ALL_ON.temperature, abs=1e-4)
    assert stats.pairs_per_s > 0
    assert all(math.isfinite(h["loss"]) for h in stats.history)
    assert all(
        set(h) == {"epoch", "loss", "val_recall", "pairs_per_s", "lr", "temperature"}
        for h in stats.history
    )


def test_all_options_on_is_deterministic(all_on_run) -> None:
    base, tuned, stats = all_on_run
    again, again_stats = finetune(base, *cluster_pairs(), ALL_ON, seed=1, markets=MARKETS)
    np.testing.assert_array_equal(again.vectors, tuned.vectors)
    assert untimed(again_stats.history) == untimed(stats.history)


def test_explicit_validation_pairs_are_used() -> None:
    val_context, val_booked = cluster_pairs(60, seed=5)
    _, stats = finetune(
        random_vectors(),
        *cluster_pairs(),
        PARAMS,
        1,
        val_context=[*val_context, "unknown"],
        val_booked=[*val_booked, IDS[0]],
    )
    assert stats.val_source == "validation_sessions"
    assert (stats.n_train, stats.n_val) == (300, 60)  # every train pair trains
    assert stats.val_recall_best > stats.val_recall_base


def test_too_few_validation_pairs_fall_back_to_a_train_split() -> None:
    val_context, val_booked = cluster_pairs(9, seed=5)
    val_context += ["unknown-a", IDS[0]]  # not usable: only 9 known pairs
    val_booked += [IDS[1], "unknown-b"]
    pairs = cluster_pairs(100)
    one_epoch = PARAMS.model_copy(update={"epochs": 1})
    _, stats = finetune(
        random_vectors(), *pairs, one_epoch, 1, val_context=val_context, val_booked=val_booked
    )
    assert stats.val_source == "train_pairs_split"
    assert (stats.n_train, stats.n_val) == (80, 20)
    no_split = one_epoch.model_copy(update={"val_fraction": 0.0})
    _, stats = finetune(random_vectors(), *pairs, no_split, 1)
    assert stats.val_source == "train_pairs"
    assert (stats.n_train, stats.n_val) == (100, 0)  # early stopping watches the train pairs


def test_lr_factor_warms_up_then_decays() -> None:
    assert [lr_factor(s, 4, 12, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 12, "cosine") == 1.0
    assert lr_factor(8, 4, 12, "cosine") == pytest.approx(0.5)
    assert lr_factor(12, 4, 12, "cosine") == pytest.approx(0.0)
    assert lr_factor(1, 4, 12, "constant") == 0.5
    assert lr_factor(10, 4, 12, "constant") == 1.0
    assert lr_factor(0, 0, 12, "cosine") == 1.0


def test_recorded_lr_follows_warmup_then_cosine_decay() -> None:
    params = PARAMS.model_copy(
        update={"lr_schedule": "cosine", "warmup_epochs": 2.0, "patience": 100}
    )
    _, stats = finetune(random_vectors(), *cluster_pairs(), params, seed=1)
    steps_per_epoch = 4  # 240 train pairs in batches of 64: 64, 64, 64, 48
    total, warmup = steps_per_epoch * params.epochs, 2 * steps_per_epoch
    lrs = [h["lr"] for h in stats.history]  # the lr of each epoch's last step
    expected = [
        params.lr * lr_factor(e * steps_per_epoch - 1, warmup, total, "cosine")
        for e in range(1, params.epochs + 1)
    ]
    assert lrs == pytest.approx(expected)
    assert lrs[0] < lrs[1] == pytest.approx(params.lr)  # warmup, peak at its end
    assert all(a > b for a, b in itertools.pairwise(lrs[1:]))  # then cosine decay
