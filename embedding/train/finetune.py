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
* ``val_fraction``: without usable validation pairs (at least ``MIN_VAL_PAIRS``, in
  ``embedding.train.finetune_state``, with both items known), early stopping watches this
  random share of the train pairs (all of them at 0).

Checkpoints (``finetune(..., checkpoint=path)``, ``embedding.train.checkpoint``): after each
epoch the whole training state (table, temperature, Adam and schedule, momentum table and
queue, the sampler's generator, the best table so far, early-stopping counters, statistics) is
written atomically to ``path``. A rerun with the same settings and inputs resumes after the
last epoch saved and ends with the same bytes as a run never interrupted; a file of another run,
or an unreadable one, is ignored with a warning (the run starts over and overwrites it). The
file outlives ``finetune()`` (it says whether training had ended, so a rerun killed before its
caller wrote the result returns at once): the caller deletes it once that result is durable.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from embedding.core import chaos
from embedding.core.config import FinetuneParams
from embedding.train.checkpoint import (
    load_checkpoint,
    load_state,
    run_fingerprint,
    save_checkpoint,
    state_dict,
)
from embedding.train.finetune_state import (
    FinetuneStats,
    Inputs,
    TrainState,
    build_inputs,
    new_state,
    split_pairs,
)
from embedding.train.losses import info_nce, triplet_loss
from embedding.train.negatives import n_hard_negatives, sample_hard_negatives
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

logger = logging.getLogger(__name__)

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


# --- metric ----------------------------------------------------------------------------------


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


# --- one epoch --------------------------------------------------------------------------------


def _temperature(inputs: Inputs, state: TrainState) -> Tensor | float:
    if state.log_scale is None:
        return inputs.params.temperature
    return 1.0 / state.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def batch_loss(inputs: Inputs, state: TrainState, c: Tensor, b: Tensor) -> Tensor:
    """The contrastive loss of one batch of context rows ``c`` and booked rows ``b`` (B,)."""
    params, table = inputs.params, state.table
    anchors, positives = table[c], table[b]  # (B, D), (B, D)
    hard = hard_ids = None
    if inputs.market_index is not None:
        n_hard = n_hard_negatives(params.hard_negative_ratio, c.numel())
        hard_ids = sample_hard_negatives(inputs.market_index, b, n_hard, state.generator)  # (B, H)
        hard_ids = torch.where(hard_ids == c[:, None], -1, hard_ids)  # not the anchor itself
        hard = table.detach()[hard_ids.clamp(min=0)]  # (B, H, D): never moved by this
    queue, momentum_table = state.queue, state.momentum_table
    queued = momentum_table[queue] if momentum_table is not None and queue.numel() else None
    negatives = {"hard": hard, "hard_ids": hard_ids, "queue": queued, "queue_ids": queue}
    if inputs.loss == "triplet":
        value = triplet_loss(anchors, positives, params.triplet_margin, b, **negatives)
        if params.symmetric:
            reverse = triplet_loss(positives, anchors, params.triplet_margin, c)
            value = (value + reverse) / 2
        return value
    temp = _temperature(inputs, state)
    log_q = inputs.log_q_booked[b] if inputs.log_q_booked is not None else None
    value = info_nce(anchors, positives, temp, b, log_q=log_q, **negatives)
    if params.symmetric:
        log_q = inputs.log_q_context[c] if inputs.log_q_context is not None else None
        value = (value + info_nce(positives, anchors, temp, c, log_q=log_q)) / 2
    return value


def train_step(inputs: Inputs, state: TrainState, c: Tensor, b: Tensor) -> float:
    """One optimizer step on a batch (loss, anchor penalty, weight decay); its loss."""
    params, table = inputs.params, state.table
    value = batch_loss(inputs, state, c, b)
    touched = torch.cat([c, b]).unique()
    rows = table[touched]
    anchor = (rows - inputs.base_table[touched]).pow(2).sum(dim=1).mean()
    value = value + params.anchor_weight * anchor
    if params.weight_decay > 0:
        value = value + params.weight_decay * rows.pow(2).sum(dim=1).mean()
    state.optimizer.zero_grad(set_to_none=True)
    value.backward()
    if params.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(state.trainable, params.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    with torch.no_grad():
        if state.log_scale is not None:
            state.log_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
        if state.momentum_table is not None:
            state.momentum_table[touched] = (
                params.momentum * state.momentum_table[touched]
                + (1 - params.momentum) * table[touched].detach()
            )
            state.queue = torch.cat([state.queue, b])[-params.queue_size :]
    return value.item()


def run_epoch(inputs: Inputs, state: TrainState) -> tuple[float, float, float]:
    """One pass over the train pairs in a fresh random order (batches of one pair skipped):
    (mean loss, lr of the last step, seconds)."""
    started = time.monotonic()
    n_train, batch_size = state.stats.n_train, inputs.params.batch_size
    perm = torch.randperm(n_train, generator=state.generator).to(inputs.device)
    total, batches, last_lr = 0.0, 0, state.optimizer.param_groups[0]["lr"]
    for start in range(0, n_train, batch_size):
        idx = perm[start : start + batch_size]
        if idx.numel() < 2:
            continue
        last_lr = state.optimizer.param_groups[0]["lr"]
        total += train_step(inputs, state, inputs.ctx[idx], inputs.bkd[idx])  # (B,), (B,)
        batches += 1
    return total / max(batches, 1), last_lr, time.monotonic() - started


# --- validation, write-back -------------------------------------------------------------------


def end_epoch(inputs: Inputs, state: TrainState, loss: float, lr: float, seconds: float) -> None:
    """Validate the epoch just run, record it, keep the table if best; early stop after
    ``patience`` epochs without a better recall (``fixed_epochs``: keep the last, never stop)."""
    params, stats = inputs.params, state.stats
    epoch = state.epoch = state.epoch + 1
    recall = recall_at_k(state.table.detach(), inputs.val_ctx, inputs.val_bkd, params.recall_k)
    with torch.no_grad():
        temp_now = float(_temperature(inputs, state))
    pairs_per_s = stats.n_train / max(seconds, 1e-9)
    stats.epochs_run = epoch
    stats.temperature_final = temp_now
    stats.history.append(
        {
            "epoch": epoch,
            "loss": loss,
            "val_recall": recall,
            "pairs_per_s": pairs_per_s,
            "lr": lr,
            "temperature": temp_now,
        }
    )
    logger.info(
        "fine-tune epoch %d/%d: loss %.4f, val recall@%d %.4f, %.0f pairs/s, lr %.2e, "
        "temperature %.4f",
        epoch,
        params.epochs,
        loss,
        params.recall_k,
        recall,
        pairs_per_s,
        lr,
        temp_now,
    )
    if inputs.fixed_epochs:
        stats.best_epoch, state.best = epoch, state.table.detach().clone()
    elif recall > stats.val_recall_best:
        stats.val_recall_best, stats.best_epoch = recall, epoch
        state.best = state.table.detach().clone()
        state.stale = 0
    else:
        state.stale += 1
        if state.stale >= params.patience:
            logger.info("early stop after epoch %d (best epoch %d)", epoch, stats.best_epoch)
            state.stopped = True


def write_back(base: ItemVectors, best: Tensor) -> ItemVectors:
    """``base`` with the rows the fine-tune moved replaced by ``best``'s, L2-normalised; rows
    it never moved keep their base bytes."""
    final = best.cpu().numpy()
    moved = ~np.all(final == base.vectors, axis=1)  # rows with no pairs stay bit-identical
    vectors = base.vectors.copy()
    vectors[moved] = normalize_rows(final[moved])
    return ItemVectors(ids=base.ids, vectors=vectors, counts=base.counts)


# --- the fine-tune ---------------------------------------------------------------------------


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
    checkpoint: Path | None = None,
) -> tuple[ItemVectors, FinetuneStats]:
    """Fine-tune ``base`` on (context, booked) pairs; pairs with unknown items are skipped.

    ``fixed_epochs``: run ``params.epochs`` epochs and keep the last, with no validation (the
    refit on the whole window, whose epoch count was chosen by an earlier run).

    ``markets`` (item id -> market) enables same-market hard negatives; ``val_context`` /
    ``val_booked`` are validation pairs for early stopping (used when at least
    ``MIN_VAL_PAIRS`` are known; otherwise a ``val_fraction`` split of the train pairs);
    ``loss`` overrides ``params.loss``; ``checkpoint``: the file saved after each epoch and
    resumed from (the module docstring says how), left for the caller to delete."""
    loss_name = loss or params.loss
    if loss_name not in LOSSES:
        raise ValueError(f"unknown fine-tune loss {loss_name!r}; expected one of {LOSSES}")
    generator = seed_everything(seed)
    stats = FinetuneStats(
        device=str(pick_device(params.device)),
        loss=loss_name,
        temperature_final=params.temperature,
        queue_size=params.queue_size,
    )
    rows = split_pairs(base, (context, booked), (val_context, val_booked), params, generator, stats)
    if rows is None:
        return base, stats
    inputs = build_inputs(base, rows, markets, params, loss_name, fixed_epochs, stats)
    state = new_state(inputs, generator, stats)
    key = run_fingerprint(base, inputs, seed) if checkpoint is not None else ""
    saved = load_checkpoint(checkpoint, key) if checkpoint is not None else None
    if saved is not None:
        load_state(state, saved, inputs.device)
        logger.info("fine-tune: resuming from epoch %d of %s", state.epoch, checkpoint)
    else:
        stats.val_recall_base = stats.val_recall_best = recall_at_k(
            state.table.detach(), inputs.val_ctx, inputs.val_bkd, params.recall_k
        )
    stats = state.stats
    logger.info(
        "fine-tune (%s) on %s: %d train / %d val pairs (%s), base val recall@%d %.4f",
        loss_name,
        stats.device,
        stats.n_train,
        stats.n_val,
        stats.val_source,
        params.recall_k,
        stats.val_recall_base,
    )
    while not state.stopped and state.epoch < params.epochs:
        end_epoch(inputs, state, *run_epoch(inputs, state))
        if checkpoint is not None:
            save_checkpoint(checkpoint, state_dict(state), key)
        chaos.point("finetune.epoch")
    stats.pairs_per_s = float(np.mean([h["pairs_per_s"] for h in stats.history]))
    return write_back(base, state.best), stats
