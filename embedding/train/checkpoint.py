"""Per-epoch checkpoints of the fine-tune, so that a killed fine-tune resumes where it stopped.

Input: the fine-tune's ``TrainState`` (``embedding.train.finetune_state``) and a fingerprint of
what the run started from (``run_fingerprint``): the resolved ``FinetuneParams`` (the device
that ``auto`` picked included), the seed, the loss, ``fixed_epochs`` and a SHA-256 of the inputs
(base vectors and ids, train and validation pair rows, market index). Output: one file written
by ``torch.save`` and an atomic rename (a reader sees the previous checkpoint or the new one,
never half); on load, the saved state when the file is readable and its fingerprint matches,
put back into a fresh ``TrainState`` by ``load_state``; otherwise None with a warning naming
the file (the caller starts over and overwrites it).

Only tensors, dicts, lists, tuples, strings, numbers, booleans and None are stored (the
statistics as a JSON string), and files are read with ``torch.load(weights_only=True)``:
loading one never runs pickled code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from embedding.core.atomic import write_atomic
from embedding.train.finetune_state import FinetuneStats, Inputs, TrainState
from embedding.vectors.item_vectors import ItemVectors

logger = logging.getLogger(__name__)

FORMAT = 1  # bumped when the stored fields change: an older file is then ignored
FIELDS = frozenset(
    {"fingerprint", "epoch", "stopped", "stale", "table", "log_scale", "optimizer", "scheduler"}
    | {"momentum_table", "queue", "generator", "best", "best_recall", "best_epoch", "stats"}
)


def fingerprint(
    params: Mapping,
    seed: int,
    loss: str,
    fixed_epochs: bool,
    ids: Sequence[str],
    arrays: Sequence[np.ndarray],
) -> str:
    """A JSON string naming the run: ``params`` (``FinetuneParams.model_dump()``), seed, loss,
    ``fixed_epochs`` and a SHA-256 of ``ids`` and ``arrays`` (dtype, shape and bytes of each)."""
    digest = hashlib.sha256("\n".join(ids).encode())
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(contiguous.tobytes())
    return json.dumps(
        {
            "format": FORMAT,
            "params": dict(params),
            "seed": seed,
            "loss": loss,
            "fixed_epochs": fixed_epochs,
            "inputs": digest.hexdigest(),
        },
        sort_keys=True,
    )


def save_checkpoint(path: Path, state: Mapping[str, object], key: str) -> None:
    """Write ``state`` and the fingerprint ``key`` to ``path`` atomically."""
    write_atomic(Path(path), lambda tmp: torch.save({**state, "fingerprint": key}, tmp))


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The state saved at ``path`` (tensors on the CPU) when its fingerprint is ``key``; None
    when there is no file, or (with a warning) when it is unreadable or of another run."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a checkpoint: whatever torch raises
        logger.warning("fine-tune: unreadable checkpoint %s (%s); starting over", path, exc)
        return None
    if not isinstance(saved, dict) or not FIELDS <= saved.keys():
        logger.warning("fine-tune: %s is not a fine-tune checkpoint; starting over", path)
        return None
    if saved["fingerprint"] != key:
        logger.warning(
            "fine-tune: checkpoint %s is of another run (settings or inputs differ); starting over",
            path,
        )
        return None
    return saved


def run_fingerprint(base: ItemVectors, inputs: Inputs, seed: int) -> str:
    """The ``fingerprint`` of a fine-tune of ``base`` with ``inputs``."""
    arrays = [
        base.vectors,
        *(t.cpu().numpy() for t in (inputs.ctx, inputs.bkd, inputs.val_ctx, inputs.val_bkd)),
    ]
    if (index := inputs.market_index) is not None:
        arrays += [t.cpu().numpy() for t in (index.items, index.start, index.size, index.position)]
    resolved = {**inputs.params.model_dump(), "device": str(inputs.device)}
    return fingerprint(resolved, seed, inputs.loss, inputs.fixed_epochs, base.ids, arrays)


def state_dict(state: TrainState) -> dict:
    """``state`` as tensors and plain values, for ``save_checkpoint``."""
    return {
        "epoch": state.epoch,
        "stopped": state.stopped,
        "stale": state.stale,
        "table": state.table.detach(),
        "log_scale": None if state.log_scale is None else state.log_scale.detach(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "momentum_table": state.momentum_table,
        "queue": state.queue,
        "generator": state.generator.get_state(),
        "best": state.best,
        "best_recall": state.stats.val_recall_best,
        "best_epoch": state.stats.best_epoch,
        "stats": json.dumps(asdict(state.stats)),
    }


def load_state(state: TrainState, saved: Mapping, device: torch.device) -> None:
    """Put a ``state_dict`` (tensors on the CPU) back into ``state``, built by ``new_state``."""
    with torch.no_grad():
        state.table.copy_(saved["table"])
        if state.log_scale is not None:
            state.log_scale.copy_(saved["log_scale"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if saved["momentum_table"] is not None:
        state.momentum_table = saved["momentum_table"].to(device)
    state.queue = saved["queue"].to(device)
    state.generator.set_state(saved["generator"])
    state.best = saved["best"].to(device)
    state.stats = FinetuneStats(**json.loads(saved["stats"]))
    state.epoch, state.stopped, state.stale = saved["epoch"], saved["stopped"], saved["stale"]
