"""Contrastive losses on plain tensors (the fine-tune's objective).

Input: anchor and positive rows (B, D), row i's positive being positives[i], optionally each
positive's item id (to mask other copies of it), hard negatives (B, H, D) with their ids and a
queue of negatives (Q, D) with its ids. Output: logits (B, B + H + Q) or a scalar loss: InfoNCE
(softmax over the positive and the negatives, logQ-corrected on request) or the triplet margin
loss against the hardest negative. Cosines throughout: vector lengths never matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _similarities(
    anchors: Tensor,
    positives: Tensor,
    positive_ids: Tensor | None,
    hard: Tensor | None = None,
    hard_ids: Tensor | None = None,
    queue: Tensor | None = None,
    queue_ids: Tensor | None = None,
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
    **negatives: Tensor | None,
) -> Tensor:
    """Logits (B, B + H + Q) of row i against: the B in-batch positives (column i is its
    answer), its H hard negatives ``hard`` (B, H, D) and the Q queue vectors (Q, D).

    Scale = 1 / temperature. ``log_q`` (B,), the log sampling probability of each in-batch
    column's item, is subtracted from the in-batch columns (diagonal included; logQ correction).
    Masked to -inf: in-batch columns holding another copy of row i's positive (``positive_ids``
    (B,)), hard negatives with id < 0 or equal to the positive (``hard_ids`` (B, H)), and queue
    entries equal to the positive (``queue_ids`` (Q,)).
    """
    cos, masked = _similarities(anchors, positives, positive_ids, **negatives)
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
    **negatives: Tensor | None,
) -> Tensor:
    """Contrastive loss with in-batch negatives: row i's match is positives[i].

    ``positive_ids`` (B,) masks columns holding the same item as row i's positive, which would
    otherwise count as negatives. Scale = 1 / temperature. The keyword arguments are those of
    ``contrastive_logits``: logQ correction (``log_q``), hard negatives (``hard``,
    ``hard_ids``) and queue negatives (``queue``, ``queue_ids``).
    """
    logits = contrastive_logits(anchors, positives, temperature, positive_ids, **negatives)
    target = torch.arange(anchors.size(0), device=anchors.device)  # (B,)
    return F.cross_entropy(logits, target)


def triplet_loss(
    anchors: Tensor,
    positives: Tensor,
    margin: float,
    positive_ids: Tensor | None = None,
    **negatives: Tensor | None,
) -> Tensor:
    """Mean over rows of relu(margin - cos(a, p) + cos(a, n)), n the hardest (highest cosine)
    unmasked negative of the row among the other in-batch positives, its hard negatives and the
    queue (``hard``, ``hard_ids``, ``queue``, ``queue_ids``; same masks as
    ``contrastive_logits``). A row without any negative contributes 0."""
    cos, masked = _similarities(anchors, positives, positive_ids, **negatives)
    batch = anchors.size(0)
    eye = torch.zeros_like(masked)
    eye[:, :batch] = torch.eye(batch, dtype=torch.bool, device=masked.device)
    positive = cos[:, :batch].diagonal()  # (B,)
    negative = cos.masked_fill(masked | eye, float("-inf")).max(dim=1).values  # (B,)
    return F.relu(margin - positive + negative).mean()
