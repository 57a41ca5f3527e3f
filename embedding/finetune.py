"""Contrastive fine-tuning (PyTorch) of the skip-gram vectors on booking pairs.

Input: base ``ItemVectors`` and booking pairs (context item -> booked item). Output: new
``ItemVectors`` over the same ids, plus training statistics.

Loss: InfoNCE with in-batch negatives (row i's positive is booked item i; other booked items of
the batch are its negatives, except copies of its own positive, which are masked out as false
negatives), plus ``anchor_weight`` times the squared distance of every touched row to its base
vector.

Why an anchor and per-row updates: the published space must stay coherent. Items with no
booking pairs get no gradient and keep their base vector exactly (Adam with no weight decay
leaves untouched rows alone), and the anchor keeps moved items near where the skip-gram put
them, so both kinds stay comparable by cosine. Early stopping on validation recall@k keeps the
best epoch, and "epoch 0" (the base vectors) counts: fine-tuning never publishes something worse
on its own validation pairs than what it started from.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from embedding.config import FinetuneParams
from embedding.train_w2v import ItemVectors, normalize_rows

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed random, numpy and torch; return a generator for samplers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def info_nce(
    anchors: Tensor, positives: Tensor, temperature: float, positive_ids: Tensor | None = None
) -> Tensor:
    """Contrastive loss with in-batch negatives: row i's match is positives[i].

    ``positive_ids`` (B,) masks columns holding the same item as row i's positive, which would
    otherwise count as negatives. Scale = 1 / temperature.
    """
    a = F.normalize(anchors, dim=-1)  # (B, D)
    p = F.normalize(positives, dim=-1)  # (B, D)
    logits = a @ p.T / temperature  # (B, B)
    if positive_ids is not None:
        same = positive_ids[:, None] == positive_ids[None, :]  # (B, B)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(a.size(0), device=a.device)  # (B,)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def recall_at_k(table: Tensor, context: Tensor, booked: Tensor, k: int, chunk: int = 1024) -> float:
    """Share of pairs whose booked item is among the k nearest items of the context item
    (cosine, the context item itself excluded)."""
    if context.numel() == 0:
        return 0.0
    normed = F.normalize(table, dim=-1)
    hits = 0
    for start in range(0, context.numel(), chunk):
        ctx = context[start : start + chunk]
        target = booked[start : start + chunk]
        scores = normed[ctx] @ normed.T  # (c, N)
        scores[torch.arange(ctx.numel(), device=scores.device), ctx] = float("-inf")
        target_score = scores.gather(1, target[:, None])  # (c, 1)
        rank = (scores > target_score).sum(dim=1)  # (c,)
        hits += int((rank < k).sum())
    return hits / context.numel()


@dataclass
class FinetuneStats:
    n_pairs: int = 0
    n_train: int = 0
    n_val: int = 0
    epochs_run: int = 0
    best_epoch: int = 0
    val_recall_base: float = 0.0
    val_recall_best: float = 0.0
    device: str = "cpu"
    skipped: str | None = None
    history: list[dict] = field(default_factory=list)


def _pair_indices(
    base: ItemVectors, context: list[str], booked: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    index = base.index()
    rows = [
        (index[c], index[b])
        for c, b in zip(context, booked, strict=True)
        if c in index and b in index
    ]
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    arr = np.array(rows, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def finetune(
    base: ItemVectors,
    context: list[str],
    booked: list[str],
    params: FinetuneParams,
    seed: int,
) -> tuple[ItemVectors, FinetuneStats]:
    """Fine-tune ``base`` on (context, booked) pairs; pairs with unknown items are skipped."""
    generator = seed_everything(seed)
    device = pick_device(params.device)
    stats = FinetuneStats(device=str(device))
    ctx_all, bkd_all = _pair_indices(base, context, booked)
    stats.n_pairs = int(ctx_all.size)
    if stats.n_pairs < 4:
        stats.skipped = f"only {stats.n_pairs} booking pairs with both items in the vocabulary"
        logger.warning("fine-tune skipped: %s", stats.skipped)
        return base, stats
    order = torch.randperm(stats.n_pairs, generator=generator).numpy()
    n_val = int(stats.n_pairs * params.val_fraction) if params.val_fraction > 0 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    stats.n_train, stats.n_val = int(train_idx.size), int(val_idx.size)
    ctx = torch.as_tensor(ctx_all[train_idx], device=device)
    bkd = torch.as_tensor(bkd_all[train_idx], device=device)
    # without validation pairs, early stopping watches the training pairs
    val_ctx = torch.as_tensor(ctx_all[val_idx] if n_val else ctx_all[train_idx], device=device)
    val_bkd = torch.as_tensor(bkd_all[val_idx] if n_val else bkd_all[train_idx], device=device)

    base_table = torch.as_tensor(base.vectors, device=device)
    table = torch.nn.Parameter(base_table.clone())
    optimizer = torch.optim.Adam([table], lr=params.lr)
    best = base_table.clone()
    stats.val_recall_base = stats.val_recall_best = recall_at_k(
        table.detach(), val_ctx, val_bkd, params.recall_k
    )
    logger.info(
        "fine-tune on %s: %d train / %d val pairs, base val recall@%d %.4f",
        device,
        stats.n_train,
        stats.n_val,
        params.recall_k,
        stats.val_recall_base,
    )
    stale = 0
    for epoch in range(1, params.epochs + 1):
        started = time.monotonic()
        perm = torch.randperm(stats.n_train, generator=generator).to(device)
        total, batches = 0.0, 0
        for start in range(0, stats.n_train, params.batch_size):
            idx = perm[start : start + params.batch_size]
            if idx.numel() < 2:
                continue
            c, b = ctx[idx], bkd[idx]  # (B,), (B,)
            loss = info_nce(table[c], table[b], params.temperature, positive_ids=b)
            touched = torch.cat([c, b]).unique()
            anchor = (table[touched] - base_table[touched]).pow(2).sum(dim=1).mean()
            loss = loss + params.anchor_weight * anchor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        elapsed = time.monotonic() - started
        recall = recall_at_k(table.detach(), val_ctx, val_bkd, params.recall_k)
        stats.epochs_run = epoch
        stats.history.append(
            {"epoch": epoch, "loss": total / max(batches, 1), "val_recall": recall}
        )
        logger.info(
            "fine-tune epoch %d/%d: loss %.4f, val recall@%d %.4f, %.0f pairs/s",
            epoch,
            params.epochs,
            total / max(batches, 1),
            params.recall_k,
            recall,
            stats.n_train / max(elapsed, 1e-9),
        )
        if recall > stats.val_recall_best:
            stats.val_recall_best, stats.best_epoch = recall, epoch
            best = table.detach().clone()
            stale = 0
        else:
            stale += 1
            if stale >= params.patience:
                logger.info("early stop after epoch %d (best epoch %d)", epoch, stats.best_epoch)
                break
    final = best.cpu().numpy()
    moved = ~np.all(final == base.vectors, axis=1)  # rows with no pairs stay bit-identical
    vectors = base.vectors.copy()
    vectors[moved] = normalize_rows(final[moved])
    tuned = ItemVectors(ids=base.ids, vectors=vectors, counts=base.counts)
    return tuned, stats
