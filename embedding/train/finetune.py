"""Contrastive fine-tuning (PyTorch) of the skip-gram vectors on booking pairs.

Input: base ``ItemVectors``, booking pairs (context item -> booked item) and optionally each
item's market and explicit validation pairs. Output: new ``ItemVectors`` over the same ids, plus
training statistics (``FinetuneStats``).

Coherence. The published space must stay coherent: items with booking pairs move, every other
item keeps its skip-gram vector, and both kinds must stay comparable by cosine. Hence:

* an anchor penalty, ``anchor_weight`` times the squared distance of every touched row (the
  context and booked items of a batch) to its base vector, keeps moved items near where the
  skip-gram put them;
* updates reach only the rows a batch touches: hard negatives and queue entries are read
  detached (they push the anchor, never move themselves), weight decay is a loss term on the
  touched rows (not AdamW over the whole table) and Adam's state of a row that never had a
  gradient stays zero, so its update is exactly zero;
* rows of items in no training pair are therefore bit-identical to the base (a row touched once
  may keep drifting a little on Adam's momentum; it is still anchored);
* early stopping on validation recall@k keeps the best epoch, and "epoch 0" (the base vectors)
  counts: fine-tuning never publishes something worse on its validation pairs than its input.

Knobs (``FinetuneParams``):

* ``loss``: ``infonce`` (softmax over the positive and the negatives) or ``triplet`` (margin
  ``triplet_margin`` between the positive's cosine and the hardest negative's); ``finetune(...,
  loss=)`` overrides it so the pipeline can train the comparison variant with the same params.
* ``temperature`` (logit scale = 1 / temperature); ``learn_temperature`` learns it as a
  log-scale parameter, the scale clamped to <= 100 (as CLIP).
* ``symmetric``: also the booked -> context direction (in-batch contexts as candidates), the
  two losses averaged.
* ``hard_negative_ratio``: ceil(ratio * (B - 1)) negatives per row drawn uniformly from the
  booked item's market (the booked item excluded; items without a market get none), as extra
  columns next to the B in-batch ones; 0: off.
* ``logq_correction``: sampling-bias correction (Yi et al. 2019): in-batch candidates are
  sampled in proportion to their booking frequency q, so log q is subtracted from every in-batch
  logit (diagonal included); hard negatives, drawn uniformly in the market, are not corrected.
* ``queue_size`` / ``momentum``: a MoCo-style FIFO of the last booked items, scored with a
  momentum (EMA, updated on touched rows after each step) copy of the table, detached, as extra
  negative columns; 0: off.
* ``lr``, ``lr_schedule`` (constant or cosine decay) after ``warmup_epochs`` of linear warmup,
  per step; ``weight_decay`` on touched rows only; ``grad_clip`` on the gradient norm.
* false negatives (another copy of a row's positive among its negatives) are always masked.
* ``val_fraction``: without usable validation pairs (at least ``MIN_VAL_PAIRS`` with both items
  known), early stopping watches this random share of the train pairs (all of them at 0).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from embedding.core import chaos
from embedding.core.config import FinetuneParams
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

logger = logging.getLogger(__name__)

MIN_VAL_PAIRS = 10  # explicit validation pairs needed to use them for early stopping
MAX_LOGIT_SCALE = 100.0  # a learned 1 / temperature stays at or below this (CLIP)
LOSSES = ("infonce", "triplet")


def seed_everything(seed: int) -> torch.Generator:
    """Seed random, numpy and torch; return a (CPU) generator for samplers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # the backward of row indexing (index_put_ with accumulate) sums in thread order on CPU:
    # without this, two runs of a transition fine-tune differ (the DAG test compares bytes)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --- losses -----------------------------------------------------------------------------------


def _similarities(
    anchors: Tensor,
    positives: Tensor,
    positive_ids: Tensor | None,
    hard: Tensor | None,
    hard_ids: Tensor | None,
    queue: Tensor | None,
    queue_ids: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Cosines (B, B + H + Q) of each anchor to the in-batch positives, its own hard negatives
    and the queue, and the mask of columns that must not count (false negatives, empty slots).
    Column i of the first B is row i's positive and is never masked."""
    a = F.normalize(anchors, dim=-1)  # (B, D)
    cos = [a @ F.normalize(positives, dim=-1).T]  # (B, B)
    batch = a.size(0)
    if positive_ids is not None:
        same = positive_ids[:, None] == positive_ids[None, :]  # (B, B)
        same.fill_diagonal_(False)
    else:
        same = torch.zeros(batch, batch, dtype=torch.bool, device=a.device)
    masks = [same]
    if hard is not None and hard.size(1) > 0:
        cos.append(torch.einsum("bd,bhd->bh", a, F.normalize(hard, dim=-1)))  # (B, H)
        if hard_ids is None:
            hard_ids = torch.zeros(hard.shape[:2], dtype=torch.long, device=a.device)
        invalid = hard_ids < 0
        if positive_ids is not None:
            invalid = invalid | (hard_ids == positive_ids[:, None])
        masks.append(invalid)
    if queue is not None and queue.size(0) > 0:
        cos.append(a @ F.normalize(queue, dim=-1).T)  # (B, Q)
        if queue_ids is not None and positive_ids is not None:
            masks.append(queue_ids[None, :] == positive_ids[:, None])
        else:
            masks.append(torch.zeros(batch, queue.size(0), dtype=torch.bool, device=a.device))
    return torch.cat(cos, dim=1), torch.cat(masks, dim=1)


def contrastive_logits(
    anchors: Tensor,
    positives: Tensor,
    temperature: float | Tensor,
    positive_ids: Tensor | None = None,
    *,
    log_q: Tensor | None = None,
    hard: Tensor | None = None,
    hard_ids: Tensor | None = None,
    queue: Tensor | None = None,
    queue_ids: Tensor | None = None,
) -> Tensor:
    """Logits (B, B + H + Q) of row i against: the B in-batch positives (column i is its
    answer), its H hard negatives ``hard`` (B, H, D) and the Q queue vectors (Q, D).

    Scale = 1 / temperature. ``log_q`` (B,), the log sampling probability of each in-batch
    column's item, is subtracted from the in-batch columns (diagonal included; logQ correction).
    Masked to -inf: in-batch columns holding another copy of row i's positive (``positive_ids``
    (B,)), hard negatives with id < 0 or equal to the positive (``hard_ids`` (B, H)), and queue
    entries equal to the positive (``queue_ids`` (Q,)).
    """
    cos, masked = _similarities(anchors, positives, positive_ids, hard, hard_ids, queue, queue_ids)
    logits = cos / temperature
    if log_q is not None:
        batch = anchors.size(0)
        correction = torch.zeros(logits.size(1), dtype=logits.dtype, device=logits.device)
        correction[:batch] = log_q.to(logits.dtype)
        logits = logits - correction[None, :]
    return logits.masked_fill(masked, float("-inf"))


def info_nce(
    anchors: Tensor,
    positives: Tensor,
    temperature: float | Tensor,
    positive_ids: Tensor | None = None,
    *,
    log_q: Tensor | None = None,
    hard: Tensor | None = None,
    hard_ids: Tensor | None = None,
    queue: Tensor | None = None,
    queue_ids: Tensor | None = None,
) -> Tensor:
    """Contrastive loss with in-batch negatives: row i's match is positives[i].

    ``positive_ids`` (B,) masks columns holding the same item as row i's positive, which would
    otherwise count as negatives. Scale = 1 / temperature. The keyword arguments add logQ
    correction, hard negatives and queue negatives (see ``contrastive_logits``).
    """
    logits = contrastive_logits(
        anchors,
        positives,
        temperature,
        positive_ids,
        log_q=log_q,
        hard=hard,
        hard_ids=hard_ids,
        queue=queue,
        queue_ids=queue_ids,
    )
    target = torch.arange(anchors.size(0), device=anchors.device)  # (B,)
    return F.cross_entropy(logits, target)


def triplet_loss(
    anchors: Tensor,
    positives: Tensor,
    margin: float,
    positive_ids: Tensor | None = None,
    *,
    hard: Tensor | None = None,
    hard_ids: Tensor | None = None,
    queue: Tensor | None = None,
    queue_ids: Tensor | None = None,
) -> Tensor:
    """Mean over rows of relu(margin - cos(a, p) + cos(a, n)), n the hardest (highest cosine)
    unmasked negative of the row among the other in-batch positives, its hard negatives and the
    queue (same masks as ``contrastive_logits``). A row without any negative contributes 0."""
    cos, masked = _similarities(anchors, positives, positive_ids, hard, hard_ids, queue, queue_ids)
    batch = anchors.size(0)
    eye = torch.zeros_like(masked)
    eye[:, :batch] = torch.eye(batch, dtype=torch.bool, device=masked.device)
    positive = cos[:, :batch].diagonal()  # (B,)
    negative = cos.masked_fill(masked | eye, float("-inf")).max(dim=1).values  # (B,)
    return F.relu(margin - positive + negative).mean()


# --- hard negatives ---------------------------------------------------------------------------


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


# --- schedule, metric -------------------------------------------------------------------------


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup to 1 over
    ``warmup_steps``, then constant or cosine decay towards 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


# --- finetune ---------------------------------------------------------------------------------


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
    loss: str = "infonce"
    # validation_sessions | train_pairs_split | train_pairs (no split: early stop on train pairs)
    val_source: str = "train_pairs"
    temperature_final: float = 0.0
    n_hard_negatives: int = 0  # per row of a full batch
    queue_size: int = 0
    pairs_per_s: float = 0.0  # training pairs per second, mean over epochs
    # per epoch: epoch, loss, val_recall, pairs_per_s, lr (of its last step), temperature
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


def _n_hard(ratio: float, batch: int) -> int:
    return math.ceil(round(ratio * (batch - 1), 9)) if ratio > 0 else 0


def _log_frequency(items: Tensor, n_items: int) -> Tensor:
    """log of each item's share of ``items`` (items never seen: as if seen once)."""
    counts = torch.bincount(items, minlength=n_items).clamp(min=1).to(torch.float32)
    return torch.log(counts / max(items.numel(), 1))


def finetune(
    base: ItemVectors,
    context: list[str],
    booked: list[str],
    params: FinetuneParams,
    seed: int,
    markets: Mapping[str, str | None] | None = None,
    val_context: list[str] | None = None,
    val_booked: list[str] | None = None,
    loss: str | None = None,
    fixed_epochs: bool = False,
) -> tuple[ItemVectors, FinetuneStats]:
    """Fine-tune ``base`` on (context, booked) pairs; pairs with unknown items are skipped.

    ``fixed_epochs``: run ``params.epochs`` epochs and keep the last, with no validation (the
    refit on the whole window, whose epoch count was chosen by an earlier run).

    ``markets`` (item id -> market) enables same-market hard negatives; ``val_context`` /
    ``val_booked`` are validation pairs for early stopping (used when at least
    ``MIN_VAL_PAIRS`` are known; otherwise a ``val_fraction`` split of the train pairs);
    ``loss`` overrides ``params.loss``."""
    loss_name = loss or params.loss
    if loss_name not in LOSSES:
        raise ValueError(f"unknown fine-tune loss {loss_name!r}; expected one of {LOSSES}")
    generator = seed_everything(seed)
    device = pick_device(params.device)
    stats = FinetuneStats(
        device=str(device),
        loss=loss_name,
        temperature_final=params.temperature,
        queue_size=params.queue_size,
    )
    ctx_all, bkd_all = _pair_indices(base, context, booked)
    stats.n_pairs = int(ctx_all.size)
    explicit_ctx = explicit_bkd = np.zeros(0, np.int64)
    if val_context is not None and val_booked is not None:
        explicit_ctx, explicit_bkd = _pair_indices(base, val_context, val_booked)
    use_explicit = explicit_ctx.size >= MIN_VAL_PAIRS
    n_val = int(stats.n_pairs * params.val_fraction) if params.val_fraction > 0 else 0
    if use_explicit:
        stats.val_source = "validation_sessions"
    elif val_context is not None:
        logger.info(
            "only %d usable validation pairs (< %d): validating on train pairs",
            explicit_ctx.size,
            MIN_VAL_PAIRS,
        )
    if not use_explicit:
        stats.val_source = "train_pairs_split" if n_val else "train_pairs"
    if stats.n_pairs < 4:
        stats.skipped = f"only {stats.n_pairs} booking pairs with both items in the vocabulary"
        logger.warning("fine-tune skipped: %s", stats.skipped)
        return base, stats

    if use_explicit:
        train_idx = np.arange(stats.n_pairs)
        val_ctx_np, val_bkd_np = explicit_ctx, explicit_bkd
    else:
        order = torch.randperm(stats.n_pairs, generator=generator).numpy()
        val_idx, train_idx = order[:n_val], order[n_val:]
        # without validation pairs, early stopping watches the training pairs
        val_pick = val_idx if n_val else train_idx
        val_ctx_np, val_bkd_np = ctx_all[val_pick], bkd_all[val_pick]
    # n_val counts held-out pairs: 0 when early stopping watches the training pairs themselves
    stats.n_train = int(train_idx.size)
    stats.n_val = int(val_ctx_np.size) if stats.val_source != "train_pairs" else 0
    ctx = torch.as_tensor(ctx_all[train_idx], device=device)
    bkd = torch.as_tensor(bkd_all[train_idx], device=device)
    val_ctx = torch.as_tensor(val_ctx_np, device=device)
    val_bkd = torch.as_tensor(val_bkd_np, device=device)
    n_items = len(base.ids)

    base_table = torch.as_tensor(base.vectors, device=device)
    table = torch.nn.Parameter(base_table.clone())
    trainable = [table]
    log_scale: torch.nn.Parameter | None = None
    if params.learn_temperature:
        log_scale = torch.nn.Parameter(
            torch.tensor(math.log(1.0 / params.temperature), device=device)
        )
        trainable.append(log_scale)
    optimizer = torch.optim.Adam(trainable, lr=params.lr)
    batch_size = params.batch_size
    steps_per_epoch = max(1, stats.n_train // batch_size + int(stats.n_train % batch_size >= 2))
    total_steps = steps_per_epoch * params.epochs
    warmup_steps = round(params.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, params.lr_schedule)
    )

    market_index: MarketIndex | None = None
    if markets is not None and params.hard_negative_ratio > 0:
        market_index = build_market_index(base.ids, markets, device)
        if market_index.n_markets == 0:
            market_index = None
    if market_index is not None:
        stats.n_hard_negatives = _n_hard(params.hard_negative_ratio, min(batch_size, stats.n_train))
    log_q_booked = log_q_context = None
    if params.logq_correction:
        log_q_booked = _log_frequency(bkd, n_items)
        log_q_context = _log_frequency(ctx, n_items) if params.symmetric else None
    momentum_table = base_table.clone() if params.queue_size > 0 else None
    queue = torch.zeros(0, dtype=torch.long, device=device)

    def temperature() -> Tensor | float:
        if log_scale is None:
            return params.temperature
        return 1.0 / log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def batch_loss(c: Tensor, b: Tensor) -> Tensor:
        anchors, positives = table[c], table[b]  # (B, D), (B, D)
        hard = hard_ids = None
        if market_index is not None:
            n_hard = _n_hard(params.hard_negative_ratio, c.numel())
            hard_ids = sample_hard_negatives(market_index, b, n_hard, generator)  # (B, H)
            hard_ids = torch.where(hard_ids == c[:, None], -1, hard_ids)  # not the anchor itself
            hard = table.detach()[hard_ids.clamp(min=0)]  # (B, H, D): never moved by this
        queued = momentum_table[queue] if momentum_table is not None and queue.numel() else None
        negatives = {"hard": hard, "hard_ids": hard_ids, "queue": queued, "queue_ids": queue}
        if loss_name == "triplet":
            value = triplet_loss(anchors, positives, params.triplet_margin, b, **negatives)
            if params.symmetric:
                reverse = triplet_loss(positives, anchors, params.triplet_margin, c)
                value = (value + reverse) / 2
            return value
        temp = temperature()
        log_q = log_q_booked[b] if log_q_booked is not None else None
        value = info_nce(anchors, positives, temp, b, log_q=log_q, **negatives)
        if params.symmetric:
            log_q = log_q_context[c] if log_q_context is not None else None
            value = (value + info_nce(positives, anchors, temp, c, log_q=log_q)) / 2
        return value

    best = base_table.clone()
    if fixed_epochs:
        val_ctx = val_bkd = val_ctx[:0]  # no validation: recall_at_k of nothing is 0
    stats.val_recall_base = stats.val_recall_best = recall_at_k(
        table.detach(), val_ctx, val_bkd, params.recall_k
    )
    logger.info(
        "fine-tune (%s) on %s: %d train / %d val pairs (%s), base val recall@%d %.4f",
        loss_name,
        device,
        stats.n_train,
        stats.n_val,
        stats.val_source,
        params.recall_k,
        stats.val_recall_base,
    )
    stale = 0
    for epoch in range(1, params.epochs + 1):
        started = time.monotonic()
        perm = torch.randperm(stats.n_train, generator=generator).to(device)
        total, batches, last_lr = 0.0, 0, optimizer.param_groups[0]["lr"]
        for start in range(0, stats.n_train, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() < 2:
                continue
            c, b = ctx[idx], bkd[idx]  # (B,), (B,)
            value = batch_loss(c, b)
            touched = torch.cat([c, b]).unique()
            rows = table[touched]
            anchor = (rows - base_table[touched]).pow(2).sum(dim=1).mean()
            value = value + params.anchor_weight * anchor
            if params.weight_decay > 0:
                value = value + params.weight_decay * rows.pow(2).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if params.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
            last_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                if log_scale is not None:
                    log_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
                if momentum_table is not None:
                    momentum_table[touched] = (
                        params.momentum * momentum_table[touched]
                        + (1 - params.momentum) * table[touched].detach()
                    )
                    queue = torch.cat([queue, b])[-params.queue_size :]
            total += value.item()
            batches += 1
        elapsed = time.monotonic() - started
        recall = recall_at_k(table.detach(), val_ctx, val_bkd, params.recall_k)
        with torch.no_grad():
            temp_now = float(temperature())
        pairs_per_s = stats.n_train / max(elapsed, 1e-9)
        stats.epochs_run = epoch
        stats.temperature_final = temp_now
        stats.history.append(
            {
                "epoch": epoch,
                "loss": total / max(batches, 1),
                "val_recall": recall,
                "pairs_per_s": pairs_per_s,
                "lr": last_lr,
                "temperature": temp_now,
            }
        )
        chaos.point("finetune.epoch")
        logger.info(
            "fine-tune epoch %d/%d: loss %.4f, val recall@%d %.4f, %.0f pairs/s, lr %.2e, "
            "temperature %.4f",
            epoch,
            params.epochs,
            total / max(batches, 1),
            params.recall_k,
            recall,
            pairs_per_s,
            last_lr,
            temp_now,
        )
        if fixed_epochs:
            stats.best_epoch, best = epoch, table.detach().clone()
        elif recall > stats.val_recall_best:
            stats.val_recall_best, stats.best_epoch = recall, epoch
            best = table.detach().clone()
            stale = 0
        else:
            stale += 1
            if stale >= params.patience:
                logger.info("early stop after epoch %d (best epoch %d)", epoch, stats.best_epoch)
                break
    stats.pairs_per_s = float(np.mean([h["pairs_per_s"] for h in stats.history]))
    final = best.cpu().numpy()
    moved = ~np.all(final == base.vectors, axis=1)  # rows with no pairs stay bit-identical
    vectors = base.vectors.copy()
    vectors[moved] = normalize_rows(final[moved])
    tuned = ItemVectors(ids=base.ids, vectors=vectors, counts=base.counts)
    return tuned, stats
