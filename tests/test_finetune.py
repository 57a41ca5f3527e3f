"""Tests for the contrastive fine-tune: the loss on plain tensors, recall@k, and ``finetune()`` on
a small synthetic table (real torch on CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embedding.config import FinetuneParams
from embedding.finetune import FinetuneStats, finetune, info_nce, recall_at_k
from embedding.train_w2v import ItemVectors, normalize_rows

N_ITEMS, DIM = 200, 16
N_PAIRED = 50  # items 0..49 appear in booking pairs, 50..199 never do
CLUSTER = 5  # pairs join items of the same block of 5 among 0..49
IDS = [f"i{i:03d}" for i in range(N_ITEMS)]
PARAMS = FinetuneParams(
    epochs=6, batch_size=64, lr=0.01, anchor_weight=1.0, val_fraction=0.2, device="cpu"
)

small_floats = st.floats(-1.0, 1.0, allow_nan=False, width=32)


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
    assert again_stats.history == stats.history


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
