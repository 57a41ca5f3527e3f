"""Our own skip-gram trainer (PyTorch): Airbnb's objective, which gensim cannot train.

Input: training sessions (item lists), each session's booked items, each item's market, and
``Word2VecParams``. Output: ``ItemVectors`` (the input table, L2-normalised), like gensim's.

Objective (Grbovic & Cheng, KDD 2018, section 3.1), skip-gram with negative sampling:

* positives: every (centre, context) pair within ``window`` positions of one session, both
  directions, after word2vec's down-sampling of frequent items (``sample``, drawn per epoch);
* **global context** (``global_context``): in a booked session, each booked item is a positive
  context of every other item of the session, whatever the distance: the booking pulls the
  whole session towards it;
* ``negative`` noise items per positive drawn from the unigram distribution raised to
  ``ns_exponent`` (a 10M-entry table, as word2vec's);
* **same-market negatives** (``market_negatives``): that many extra negatives per positive drawn
  uniformly among the centre item's market (items without a market get none), so the space must
  also tell apart items of one market, which random negatives (mostly other markets) never ask.

Training: two tables (input, output), sparse gradients, batches of ``batch_size`` positives, a
fixed seed (bit-identical on CPU). ``torch_optimizer: sgd`` (default) sums the batch's losses and
steps at ``alpha`` decayed linearly to ``min_alpha``: word2vec's own updates, batched; ``adam``
is SparseAdam on the mean loss at ``torch_lr``.
CPU by default, CUDA when present (``device``). Each epoch logs words/s (tokens of the corpus
per second) and the mean loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from embedding.core.config import Word2VecParams
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

logger = logging.getLogger(__name__)

NOISE_TABLE = 10_000_000


def encode(sessions: Iterable[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids by first appearance, flat int64 codes, session offsets (n_sessions + 1,))."""
    index: dict[str, int] = {}
    codes: list[int] = []
    offsets = [0]
    for items in sessions:
        for item in items:
            codes.append(index.setdefault(item, len(index)))
        offsets.append(len(codes))
    return list(index), np.array(codes, dtype=np.int64), np.array(offsets, dtype=np.int64)


def keep_probability(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's down-sampling: an item of frequency f is kept with (sqrt(f/t) + 1) t / f."""
    if sample <= 0:
        return np.ones(counts.size)
    threshold = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / threshold) + 1) * threshold / counts)


def window_pairs(codes: np.ndarray, session: np.ndarray, window: int) -> np.ndarray:
    """(n, 2) (centre, context) of every pair within ``window`` positions of one session,
    both directions, repeats of an item left out."""
    parts = []
    for d in range(1, window + 1):
        left, right = codes[:-d], codes[d:]
        keep = (session[:-d] == session[d:]) & (left != right)
        parts += [np.stack([left[keep], right[keep]], 1), np.stack([right[keep], left[keep]], 1)]
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def global_pairs(codes: np.ndarray, session: np.ndarray, booked: Mapping[int, np.ndarray]):
    """(n, 2) (item, booked item) for every item of a booked session (the booked one itself
    excluded): Airbnb's global context."""
    parts = []
    for s, targets in booked.items():
        members = codes[session == s]
        for target in targets:
            others = members[members != target]
            parts.append(np.stack([others, np.full(others.size, target)], 1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def market_index(ids: Sequence[str], markets: Mapping[str, str | None]):
    """(item codes sorted by market, each item's market start and size in it; -1/0 without)."""
    names = [markets.get(i) for i in ids]
    known = [(m, row) for row, m in enumerate(names) if m]
    known.sort()
    order = np.array([row for _, row in known], dtype=np.int64)
    start = np.full(len(ids), -1, np.int64)
    size = np.zeros(len(ids), np.int64)
    i = 0
    while i < len(known):
        j = i
        while j < len(known) and known[j][0] == known[i][0]:
            j += 1
        rows = order[i:j]
        start[rows], size[rows] = i, j - i
        i = j
    return order, start, size


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _booked_codes(ids: list[str], booked: Sequence[Sequence[str]]) -> dict[int, np.ndarray]:
    """Session number -> the codes of its booked items that are in the vocabulary."""
    index = {item: row for row, item in enumerate(ids)}
    codes: dict[int, np.ndarray] = {}
    for s, items in enumerate(booked):
        known = [index[i] for i in items or () if i in index]
        if known:
            codes[s] = np.array(known, np.int64)
    return codes


def _batch_loss(
    emb_in: torch.nn.Embedding,
    emb_out: torch.nn.Embedding,
    batch: torch.Tensor,
    table: torch.Tensor,
    by_market: tuple[torch.Tensor, ...] | None,
    n_neg: int,
    n_market: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-pair loss (B,) of a batch of (centre, context) pairs: the positive, ``n_neg`` noise
    negatives from ``table`` and, with ``by_market`` (order, start, size), ``n_market``
    negatives from the centre's market (the centre itself and market-less items masked)."""
    device = batch.device
    centre, context = batch[:, 0], batch[:, 1]
    negs = table[torch.randint(0, NOISE_TABLE, (batch.shape[0], n_neg), device=device,
                               generator=generator)]  # fmt: skip
    u = emb_in(centre)  # (B, D)
    pos = F.logsigmoid((u * emb_out(context)).sum(1))
    neg = F.logsigmoid(-(emb_out(negs) @ u.unsqueeze(2)).squeeze(2)).sum(1)
    loss = -(pos + neg)
    if by_market is not None:
        order_t, start_t, size_t = by_market
        has = size_t[centre] > 1
        offs = torch.rand((batch.shape[0], n_market), device=device, generator=generator)
        picks = order_t[(start_t[centre].clamp(min=0)[:, None]
                         + (offs * size_t[centre][:, None]).long())]  # fmt: skip
        mneg = F.logsigmoid(-(emb_out(picks) @ u.unsqueeze(2)).squeeze(2))
        mneg = torch.where((picks != centre[:, None]) & has[:, None], mneg, 0.0)
        loss = loss - mneg.sum(1)
    return loss


def train_sgns(
    sessions: Sequence[Sequence[str]],
    params: Word2VecParams,
    seed: int,
    booked: Sequence[Sequence[str]] | None = None,
    markets: Mapping[str, str | None] | None = None,
    history: list[dict] | None = None,
) -> ItemVectors:
    """Train the Airbnb skip-gram on ``sessions`` (``booked[i]``: the booked items of session
    i; ``markets``: item -> market). ``params`` must have every knob set (see
    ``embedding.train.auto_params``)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)  # bit-identical on CPU
    device = pick_device(params.device)
    ids, codes, offsets = encode(sessions)
    n_items, dim = len(ids), int(params.vector_size)
    counts = np.bincount(codes, minlength=n_items).astype(np.float64)
    session = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    use_booked = params.global_context and booked is not None
    booked_codes = _booked_codes(ids, booked) if use_booked else {}
    noise = counts**params.ns_exponent
    table = torch.as_tensor(
        rng.choice(n_items, size=NOISE_TABLE, p=noise / noise.sum()), device=device
    )
    by_market = None
    if markets is not None and params.market_negatives > 0:
        order, start, size = market_index(ids, markets)
        if order.size:
            by_market = tuple(torch.as_tensor(a, device=device) for a in (order, start, size))
    keep_p = keep_probability(counts, params.sample)
    fixed_global = global_pairs(codes, session, booked_codes)

    emb_in = torch.nn.Embedding(n_items, dim, sparse=True).to(device)
    emb_out = torch.nn.Embedding(n_items, dim, sparse=True).to(device)
    with torch.no_grad():
        emb_in.weight.uniform_(-0.5 / dim, 0.5 / dim)
        emb_out.weight.zero_()
    tables = list(emb_in.parameters()) + list(emb_out.parameters())
    sgd = params.torch_optimizer == "sgd"
    optimizer = (
        torch.optim.SGD(tables, lr=params.alpha) if sgd
        else torch.optim.SparseAdam(tables, lr=params.torch_lr)
    )  # fmt: skip
    generator = torch.Generator(device=device).manual_seed(seed)
    n_neg, n_market = params.negative, params.market_negatives
    n_tokens = int(codes.size)
    for epoch in range(1, int(params.epochs) + 1):
        started = time.monotonic()
        kept = rng.random(codes.size) < keep_p[codes]
        pairs = window_pairs(codes[kept], session[kept], params.window)
        if fixed_global.size:
            pairs = np.concatenate([pairs, fixed_global])
        pairs = torch.as_tensor(pairs[rng.permutation(len(pairs))], device=device)
        total, batches = 0.0, 0
        n_steps = max(1, -(-len(pairs) // params.batch_size))
        for step, lo in enumerate(range(0, len(pairs), params.batch_size)):
            progress = ((epoch - 1) * n_steps + step) / (int(params.epochs) * n_steps)
            for group in optimizer.param_groups:  # linear decay, as word2vec's alpha
                group["lr"] = (
                    params.alpha - (params.alpha - params.min_alpha) * progress if sgd
                    else params.torch_lr * (1 - 0.9 * progress)
                )  # fmt: skip
            batch = pairs[lo : lo + params.batch_size]
            loss = _batch_loss(emb_in, emb_out, batch, table, by_market, n_neg, n_market, generator)
            optimizer.zero_grad(set_to_none=True)
            (loss.sum() if sgd else loss.mean()).backward()
            optimizer.step()
            total += float(loss.mean().item())
            batches += 1
        elapsed = time.monotonic() - started
        words_per_s = n_tokens / max(elapsed, 1e-9)
        if history is not None:
            history.append({"epoch": epoch, "loss": total / max(batches, 1),
                            "words_per_s": words_per_s, "pairs": len(pairs)})  # fmt: skip
        logger.info(
            "sgns epoch %d/%d on %s: %.0f words/s, %d pairs, loss %.4f",
            epoch, params.epochs, device, words_per_s, len(pairs), total / max(batches, 1),
        )  # fmt: skip
    vectors = emb_in.weight.detach().cpu().numpy()
    return ItemVectors(ids=ids, vectors=normalize_rows(vectors), counts=counts.astype(np.int64))
