"""The fine-tune's per-epoch checkpoint: a fine-tune SIGKILLed mid-way resumes from it and ends
with the bytes of a run never killed; a checkpoint of another run, or an unreadable one, is
ignored with a warning (the run starts over)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_finetune import ALL_ON, MARKETS, PARAMS, cluster_pairs, random_vectors, untimed

from embedding.core.chaos import ENV
from embedding.core.config import FinetuneParams
from embedding.train.checkpoint import FIELDS
from embedding.train.finetune import finetune

# every piece of state in play: learned temperature, Adam, cosine schedule with warmup, momentum
# table and queue, same-market hard negatives (the generator), logQ; no early stop before 5
FULL = ALL_ON.model_copy(update={"epochs": 5, "patience": 100})

CHILD = """
import sys
from pathlib import Path
from test_finetune import MARKETS, cluster_pairs, random_vectors
from embedding.core.config import FinetuneParams
from embedding.train.finetune import finetune
params = FinetuneParams.model_validate_json(sys.argv[2])
fixed = sys.argv[3] == "fixed"
finetune(random_vectors(), *cluster_pairs(), params, seed=1, markets=MARKETS,
         fixed_epochs=fixed, checkpoint=Path(sys.argv[1]))
print("finished")
"""


def run(params: FinetuneParams, checkpoint: Path | None = None, fixed: bool = False):
    return finetune(random_vectors(), *cluster_pairs(), params, seed=1, markets=MARKETS,
                    fixed_epochs=fixed, checkpoint=checkpoint)  # fmt: skip


def killed_child(checkpoint: Path, params: FinetuneParams, kill_at: str, fixed: bool) -> None:
    """Run the fine-tune in a child process (its own process group) SIGKILLed at ``kill_at``."""
    env = {**os.environ, ENV: kill_at, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkpoint), params.model_dump_json(),
         "fixed" if fixed else "validated"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        start_new_session=True,  # the kill point SIGKILLs its whole process group, not pytest
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "finished" not in child.stdout


@pytest.mark.parametrize("fixed", [False, True], ids=["validated", "fixed_epochs"])
def test_a_finetune_killed_after_epoch_2_resumes_to_the_same_bytes(
    tmp_path: Path, fixed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    params = FULL.model_copy(update={"val_fraction": 0.0}) if fixed else FULL
    checkpoint = tmp_path / "finetuned.ckpt"
    killed_child(checkpoint, params, "finetune.epoch:2", fixed)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 2 and FIELDS <= saved.keys()
    assert [p.name for p in tmp_path.iterdir()] == ["finetuned.ckpt"]  # no temp file left

    with caplog.at_level(logging.INFO, logger="embedding.train.finetune"):
        resumed, resumed_stats = run(params, checkpoint, fixed)
    assert f"fine-tune: resuming from epoch 2 of {checkpoint}" in caplog.text
    undisturbed, stats = run(params, fixed=fixed)

    assert resumed.vectors.dtype == np.float32
    assert np.array_equal(resumed.vectors, undisturbed.vectors)
    assert untimed(resumed_stats.history) == untimed(stats.history)
    assert [h["epoch"] for h in stats.history] == [1, 2, 3, 4, 5]
    assert (resumed_stats.best_epoch, resumed_stats.val_recall_best) == (
        stats.best_epoch,
        stats.val_recall_best,
    )
    assert resumed_stats.temperature_final == stats.temperature_final
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 5  # left for the caller


def test_an_early_stopped_finetune_rerun_returns_its_result_without_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    params = PARAMS.model_copy(update={"lr": 0.5, "patience": 1, "epochs": 8})
    checkpoint = tmp_path / "finetuned.ckpt"
    first, first_stats = run(params, checkpoint)
    assert first_stats.epochs_run < params.epochs  # stopped early
    caplog.clear()  # the first run's lines, when an earlier test left the logger at INFO
    with caplog.at_level(logging.INFO, logger="embedding.train.finetune"):
        again, again_stats = run(params, checkpoint)
    assert f"resuming from epoch {first_stats.epochs_run} of {checkpoint}" in caplog.text
    assert "fine-tune epoch" not in caplog.text  # no epoch trained again
    assert np.array_equal(again.vectors, first.vectors)
    assert again_stats.history == first_stats.history


def test_a_checkpoint_of_other_settings_is_ignored_and_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "finetuned.ckpt"
    run(PARAMS.model_copy(update={"epochs": 2, "patience": 100}), checkpoint)
    other = PARAMS.model_copy(update={"epochs": 2, "patience": 100, "lr": 0.02})
    with caplog.at_level(logging.INFO, logger="embedding.train"):
        tuned, stats = run(other, checkpoint)
    assert f"checkpoint {checkpoint} is of another run" in caplog.text
    assert "resuming" not in caplog.text
    fresh, fresh_stats = run(other)
    assert np.array_equal(tuned.vectors, fresh.vectors)
    assert untimed(stats.history) == untimed(fresh_stats.history)
    saved = torch.load(checkpoint, weights_only=True)
    assert '"lr": 0.02' in saved["fingerprint"] and saved["epoch"] == 2


def test_a_checkpoint_of_other_inputs_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "finetuned.ckpt"
    params = PARAMS.model_copy(update={"epochs": 2, "patience": 100})
    run(params, checkpoint)
    with caplog.at_level(logging.WARNING, logger="embedding.train"):
        finetune(random_vectors(seed=3), *cluster_pairs(), params, seed=1, markets=MARKETS,
                 checkpoint=checkpoint)  # fmt: skip
    assert f"checkpoint {checkpoint} is of another run" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_an_unreadable_checkpoint_is_ignored_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    params = PARAMS.model_copy(update={"epochs": 3, "patience": 100})
    checkpoint = tmp_path / "finetuned.ckpt"
    run(params.model_copy(update={"epochs": 1}), checkpoint)
    data = checkpoint.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint", "empty": b""}
    checkpoint.write_bytes(damaged[damage])
    with caplog.at_level(logging.WARNING, logger="embedding.train"):
        tuned, stats = run(params, checkpoint)
    assert f"unreadable checkpoint {checkpoint}" in caplog.text
    fresh, fresh_stats = run(params)
    assert np.array_equal(tuned.vectors, fresh.vectors)
    assert untimed(stats.history) == untimed(fresh_stats.history)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3  # rewritten, readable
