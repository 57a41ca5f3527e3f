"""The fine-tune's inputs and training state (``embedding.train.finetune`` runs them).

Input: base ``ItemVectors``, (context, booked) id pairs, optional validation pairs and markets,
``FinetuneParams``. Output: the pairs as row indices split into train and validation
(``split_pairs``), the tensors and samplers training only reads (``Inputs``, ``build_inputs``)
and everything training changes, before its first epoch (``TrainState``, ``new_state``): what a
checkpoint (``embedding.train.checkpoint``) saves and puts back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from embedding.core.config import FinetuneParams
from embedding.train.negatives import MarketIndex, build_market_index, n_hard_negatives
from embedding.vectors.item_vectors import ItemVectors

logger = logging.getLogger(__name__)

MIN_VAL_PAIRS = 10  # explicit validation pairs needed to use them for early stopping


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup to 1 over
    ``warmup_steps``, then constant or cosine decay towards 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


@dataclass(frozen=True)
class Inputs:
    """What training reads and never changes: pairs (row indices), base table, samplers."""

    params: FinetuneParams
    loss: str
    fixed_epochs: bool
    device: torch.device
    ctx: Tensor  # (T,) train context rows
    bkd: Tensor  # (T,) train booked rows
    val_ctx: Tensor  # (V,) validation pairs: empty with fixed_epochs
    val_bkd: Tensor
    base_table: Tensor  # (N, D)
    market_index: MarketIndex | None  # None: no hard negatives
    log_q_booked: Tensor | None  # (N,) logQ correction of the in-batch columns
    log_q_context: Tensor | None  # (N,) the same, booked -> context direction


@dataclass
class TrainState:
    """Everything training changes, saved whole in a checkpoint after each epoch."""

    table: torch.nn.Parameter  # (N, D)
    log_scale: torch.nn.Parameter | None  # learned log(1 / temperature)
    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.LambdaLR
    momentum_table: Tensor | None  # (N, D) EMA of the table feeding the queue
    queue: Tensor  # (<= Q,) rows of the last booked items
    generator: torch.Generator  # CPU: shuffles and hard negatives
    best: Tensor  # (N, D) the table of the best epoch so far (epoch 0: the base)
    stats: FinetuneStats  # best recall and epoch, history
    stale: int = 0  # epochs since the best
    epoch: int = 0  # epochs done
    stopped: bool = False  # early-stopped

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [self.table] if self.log_scale is None else [self.table, self.log_scale]


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


def _log_frequency(items: Tensor, n_items: int) -> Tensor:
    """log of each item's share of ``items`` (items never seen: as if seen once)."""
    counts = torch.bincount(items, minlength=n_items).clamp(min=1).to(torch.float32)
    return torch.log(counts / max(items.numel(), 1))


def split_pairs(
    base: ItemVectors,
    pairs: tuple[list[str], list[str]],
    validation: tuple[list[str] | None, list[str] | None],
    params: FinetuneParams,
    generator: torch.Generator,
    stats: FinetuneStats,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(train context, train booked, validation context, validation booked) rows; None (the
    fine-tune skipped, ``stats.skipped`` says why) with fewer than 4 usable pairs."""
    ctx_all, bkd_all = _pair_indices(base, *pairs)
    stats.n_pairs = int(ctx_all.size)
    val_context, val_booked = validation
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
        return None
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
    return ctx_all[train_idx], bkd_all[train_idx], val_ctx_np, val_bkd_np


def build_inputs(
    base: ItemVectors,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    markets: Mapping[str, str | None] | None,
    params: FinetuneParams,
    loss: str,
    fixed_epochs: bool,
    stats: FinetuneStats,
) -> Inputs:
    """The tensors of ``rows`` (``split_pairs``) and the samplers, on ``stats.device``."""
    device = torch.device(stats.device)
    ctx, bkd, val_ctx, val_bkd = (torch.as_tensor(a, device=device) for a in rows)
    if fixed_epochs:
        val_ctx = val_bkd = val_ctx[:0]  # no validation: recall_at_k of nothing is 0
    market_index: MarketIndex | None = None
    if markets is not None and params.hard_negative_ratio > 0:
        market_index = build_market_index(base.ids, markets, device)
        if market_index.n_markets == 0:
            market_index = None
    if market_index is not None:
        full_batch = min(params.batch_size, stats.n_train)
        stats.n_hard_negatives = n_hard_negatives(params.hard_negative_ratio, full_batch)
    log_q_booked = log_q_context = None
    if params.logq_correction:
        log_q_booked = _log_frequency(bkd, len(base.ids))
        log_q_context = _log_frequency(ctx, len(base.ids)) if params.symmetric else None
    base_table = torch.as_tensor(base.vectors, device=device)
    return Inputs(
        params,
        loss,
        fixed_epochs,
        device,
        ctx,
        bkd,
        val_ctx,
        val_bkd,
        base_table,
        market_index,
        log_q_booked,
        log_q_context,
    )


def new_state(inputs: Inputs, generator: torch.Generator, stats: FinetuneStats) -> TrainState:
    """The state before the first epoch: the base table, a fresh Adam, the lr schedule."""
    params, device = inputs.params, inputs.device
    table = torch.nn.Parameter(inputs.base_table.clone())
    log_scale: torch.nn.Parameter | None = None
    if params.learn_temperature:
        log_scale = torch.nn.Parameter(
            torch.tensor(math.log(1.0 / params.temperature), device=device)
        )
    optimizer = torch.optim.Adam(
        [table] + ([log_scale] if log_scale is not None else []), lr=params.lr
    )
    batch_size = params.batch_size
    steps_per_epoch = max(1, stats.n_train // batch_size + int(stats.n_train % batch_size >= 2))
    total_steps = steps_per_epoch * params.epochs
    warmup_steps = round(params.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, params.lr_schedule)
    )
    return TrainState(
        table=table,
        log_scale=log_scale,
        optimizer=optimizer,
        scheduler=scheduler,
        momentum_table=inputs.base_table.clone() if params.queue_size > 0 else None,
        queue=torch.zeros(0, dtype=torch.long, device=device),
        generator=generator,
        best=inputs.base_table.clone(),
        stats=stats,
    )
