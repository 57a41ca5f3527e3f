"""End to end over a generated log: cluster recovery, publishing guarantees, reruns."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedding.core.checksum import file_sha256
from embedding.stages.pipeline import run_pipeline
from embedding.vectors import publish
from embedding.vectors.item_vectors import ItemVectors, normalize_rows
from embedding.vectors.parquet_io import VECTORS_FILE, read_vectors
from jobs.sessionize import run_sessionize

pytestmark = pytest.mark.slow


def same_cluster_share(vectors: ItemVectors, cluster_of: dict[str, str], k: int = 10) -> np.ndarray:
    """Per item: share of its k nearest neighbours (cosine) that sit in its planted cluster."""
    scores = vectors.vectors @ vectors.vectors.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    clusters = np.array([cluster_of[i] for i in vectors.ids])
    return (clusters[top] == clusters[:, None]).mean(axis=1)


def test_run_publishes_a_complete_version(generated_run: dict) -> None:
    result, root = generated_run["result"], generated_run["root"]
    version = result.published.version
    assert publish.current_or_none(root) == version
    assert version.startswith("20260108-")
    manifest = publish.verify_version(root / "versions" / version)
    assert manifest["data_interval"] == {"start": "2026-01-01", "end": "2026-01-09"}
    assert manifest["gate"]["passed"] is True
    assert (
        manifest["n_items"] == pq.read_metadata(root / "versions" / version / VECTORS_FILE).num_rows
    )
    assert set(manifest["files"]) == {VECTORS_FILE, "report.html", "ann_index.faiss",
                                      "ann_index.json"}  # fmt: skip
    from serving.model import load_version

    loaded = load_version(root, version)
    assert loaded.index_source == "prebuilt"  # built by the publish, checksummed, loaded as is
    report = (root / "versions" / version / "report.html").read_text()
    assert 'id="projection"' in report and "data:image/png;base64," in report
    assert manifest["params"]["word2vec"]["workers"] == 1
    vectors, markets = read_vectors(root / "versions" / version / VECTORS_FILE)
    np.testing.assert_allclose(np.linalg.norm(vectors.vectors, axis=1), 1.0, atol=1e-5)
    assert all(m is not None for m in markets.values())


def test_vectors_recover_the_planted_clusters(generated_run: dict, generated_log: Path) -> None:
    truth = pq.read_table(generated_log / "_ground_truth.parquet").to_pylist()
    cluster_of = {row["item_id"]: row["cluster"] for row in truth}
    root = generated_run["root"]
    version = publish.current_or_none(root)
    vectors, _ = read_vectors(root / "versions" / version / VECTORS_FILE)
    share = same_cluster_share(vectors, cluster_of)
    seen = vectors.counts >= 5
    # chance: 19 same-cluster items among ~10k others, about 0.002
    assert share[seen].mean() >= 0.5, share[seen].mean()
    # every item counts here, those seen once or twice (and cold-start ones) included
    assert np.average(share, weights=vectors.counts) >= 0.45


def test_finetuned_beats_popularity_on_the_holdout(generated_run: dict) -> None:
    metrics = generated_run["result"].metrics
    assert metrics["holdout"] == "last_day (2026-01-08)"
    assert metrics["finetuned"]["hr@10"] > metrics["popularity"]["hr@10"]
    assert metrics["word2vec"]["hr@10"] > metrics["popularity"]["hr@10"]
    assert 0.5 < metrics["coverage"] <= 1.0


def test_every_method_is_scored_on_the_same_cases(generated_run: dict) -> None:
    metrics = generated_run["result"].metrics
    assert metrics["baselines"] == ["popularity", "cooccurrence", "ppmi_svd"]
    for name in (*metrics["baselines"], "word2vec", "finetuned"):
        assert metrics[name]["n"] == metrics["n_cases"] > 0
        assert 0.0 <= metrics[name]["ndcg@10"] <= metrics[name]["hr@10"] <= 1.0
    assert metrics["cooccurrence"]["hr@10"] > metrics["popularity"]["hr@10"]
    booked = metrics["booked_item"]["finetuned"]
    assert booked["overall"]["n"] > 0 and len(booked["by_position"]) == 10
    assert "impression_rerank" not in metrics  # the generator records no impressions
    assert metrics["previous"] is None  # the first version here
    assert "no previous version" in generated_run["result"].evaluation.gate.reason


def test_gate_refuses_a_broken_model_that_falls_below_the_previous_version(
    generated_run: dict, tmp_path: Path
) -> None:
    from datetime import date

    from conftest import small_config

    from embedding.core.errors import QualityGateError
    from embedding.stages.plan import Paths

    work = tmp_path / "work"
    shutil.copytree(generated_run["paths"].work_dir, work)
    paths = Paths(generated_run["paths"].input, str(tmp_path / "pub"), str(work))
    good = run_pipeline(
        small_config(**{"window.days": 7}),
        paths,
        (date(2026, 1, 1), date(2026, 1, 8)),
        sessionize=run_sessionize,  # the launched job: test_sessionize_app, test_zero_config
    )
    first = good.published.version
    assert first.startswith("20260107-") and good.metrics["previous"] is None

    broken = small_config(**{"window.days": 7, "word2vec.epochs": 1, "word2vec.alpha": 0.0001,
                             "finetune.enabled": False, "gate.min_value": 0.0,
                             "gate.min_lift_over_popularity": 0.0})  # fmt: skip
    with pytest.raises(QualityGateError, match=f"previous {first}") as failure:
        run_pipeline(broken, paths, (date(2026, 1, 2), date(2026, 1, 9)), sessionize=run_sessionize)
    assert failure.value.exit_code == 3
    root = Path(paths.publish_root)
    assert publish.current_or_none(root) == first
    (rejected,) = (root / publish.REJECTED).iterdir()
    assert rejected.name.startswith("20260108-")
    manifest = json.loads((rejected / "manifest.json").read_text())
    previous = manifest["metrics"]["previous"]
    assert previous["version"] == first and previous["n"] == manifest["metrics"]["n_cases"]
    assert manifest["metrics"]["word2vec"]["hr@10"] < 0.9 * previous["hr@10"]
    assert 0.0 <= previous["stability"]["overlap@10"] < 0.2  # a broken model shares little


def test_rerun_finds_the_version_already_published(generated_run: dict) -> None:
    cfg, paths, root = generated_run["cfg"], generated_run["paths"], generated_run["root"]
    version = generated_run["result"].published.version
    vectors = root / "versions" / version / VECTORS_FILE
    before = file_sha256(vectors)
    again = run_pipeline(cfg, paths, sessionize=run_sessionize)
    assert again.published.version == version
    assert again.published.already_published is True
    assert file_sha256(vectors) == before
    assert publish.current_or_none(root) == version


def test_failed_gate_records_the_candidate_and_keeps_current(generated_run: dict) -> None:
    from embedding.core.errors import QualityGateError

    paths, root = generated_run["paths"], generated_run["root"]
    current = publish.current_or_none(root)
    strict = generated_run["cfg"].model_copy(
        update={"gate": generated_run["cfg"].gate.model_copy(update={"min_value": 0.99})}
    )
    with pytest.raises(QualityGateError, match="quality gate failed") as failure:
        run_pipeline(strict, paths, sessionize=run_sessionize)
    assert failure.value.exit_code == 3
    assert publish.current_or_none(root) == current
    rejected = [p.name for p in (root / publish.REJECTED).iterdir()]
    assert len(rejected) == 1 and rejected[0] != current
    assert not (root / "versions" / rejected[0]).exists()
    manifest = json.loads((root / publish.REJECTED / rejected[0] / "manifest.json").read_text())
    assert manifest["gate"]["passed"] is False
    assert (root / publish.REJECTED / rejected[0] / "report.html").is_file()


def _vectors(n: int = 50, dim: int = 8, seed: int = 0) -> ItemVectors:
    rng = np.random.default_rng(seed)
    return ItemVectors(
        ids=[f"i{i:03d}" for i in range(n)],
        vectors=normalize_rows(rng.normal(size=(n, dim)).astype(np.float32)),
        counts=np.arange(n, dtype=np.int64),
    )


def _tree_checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".tmp" not in p.parts
    }


class Boom(Exception):
    pass


def _fail_at(step: str):
    def hook(current: str) -> None:
        if current == step:
            raise Boom(step)

    return hook


@pytest.mark.parametrize("step", publish.STEPS)
def test_publish_failing_at_any_step_leaves_current_and_old_version(
    tmp_path: Path, step: str
) -> None:
    old = publish.publish_version(tmp_path, "20260101-aaaaaaaa", _vectors(seed=1), {}, {})
    before = _tree_checksums(tmp_path)
    with pytest.raises(Boom):
        publish.publish_version(
            tmp_path, "20260102-bbbbbbbb", _vectors(seed=2), {}, {}, fault=_fail_at(step)
        )
    assert publish.current_or_none(tmp_path) == old.version
    after = _tree_checksums(tmp_path)
    assert {k: v for k, v in after.items() if "20260102" not in k} == before
    assert not any((tmp_path / publish.TMP).iterdir())  # no temp leftovers
    new_dir = tmp_path / "versions" / "20260102-bbbbbbbb"
    if step in ("after_rename", "before_current"):
        publish.verify_version(new_dir)  # visible only complete
    else:
        assert not new_dir.exists()
    # a rerun finishes the publish
    done = publish.publish_version(tmp_path, "20260102-bbbbbbbb", _vectors(seed=2), {}, {})
    assert done.already_published == (step in ("after_rename", "before_current"))
    assert publish.current_or_none(tmp_path) == "20260102-bbbbbbbb"


def test_current_only_moves_forward(tmp_path: Path) -> None:
    publish.publish_version(tmp_path, "20260105-aaaaaaaa", _vectors(), {}, {})
    older = publish.publish_version(tmp_path, "20260103-bbbbbbbb", _vectors(seed=3), {}, {})
    assert older.current_moved is False
    assert publish.current_or_none(tmp_path) == "20260105-aaaaaaaa"
    publish.verify_version(tmp_path / "versions" / "20260103-bbbbbbbb")


def test_a_corrupted_version_is_not_taken_as_published(tmp_path: Path) -> None:
    publish.publish_version(tmp_path, "20260105-aaaaaaaa", _vectors(), {}, {})
    target = tmp_path / "versions" / "20260105-aaaaaaaa" / VECTORS_FILE
    target.write_bytes(target.read_bytes() + b"x")
    assert not publish.is_published(tmp_path, "20260105-aaaaaaaa")
    # a rerun of the same version (same inputs) replaces the damaged folder (issue 16, item 2)
    result = publish.publish_version(tmp_path, "20260105-aaaaaaaa", _vectors(), {}, {})
    assert not result.already_published
    assert publish.is_published(tmp_path, "20260105-aaaaaaaa")


def test_manifest_records_parameters_and_interval(generated_run: dict) -> None:
    root = generated_run["root"]
    version = publish.current_or_none(root)
    manifest = json.loads((root / "versions" / version / "manifest.json").read_text())
    for key in (
        "contract_version",
        "version",
        "created_at",
        "dim",
        "n_items",
        "data_interval",
        "params",
        "metrics",
        "gate",
        "files",
        "code_hash",
        "config_hash",
        "input_hashes",
    ):
        assert key in manifest, key
    assert manifest["ingest"]["rows_read"] == 200_000


def test_report_command_regenerates_a_version_report(generated_run: dict, tmp_path: Path) -> None:
    from embedding.cli import main

    root = generated_run["root"]
    version = publish.current_or_none(root)
    out = tmp_path / "r" / "report.html"
    assert main(["report", "--publish-root", str(root), "--out", str(out)]) == 0
    html = out.read_text()
    assert version in html and 'data-plot="by_position"' in html
    assert main(["report", "--publish-root", str(root), "--version", "19990101-x", "--out",
                 str(out)]) == 2  # fmt: skip


def test_published_vectors_are_chosen_on_validation_and_training_never_sees_held_out(
    generated_run: dict,
) -> None:
    from embedding.stages.inputs import load_window

    cfg, result = generated_run["cfg"], generated_run["result"]
    metrics = result.metrics
    selection = metrics["selection"]
    assert selection["metric"] == "hr@10" and selection["n_cases"] > 0
    assert set(selection["scores"]) == {"word2vec", "finetuned"}  # the comparison is not a choice
    best = max(selection["scores"].values(), key=lambda m: m["hr@10"])["hr@10"]
    assert selection["scores"][selection["chosen"]]["hr@10"] == best
    assert metrics["published"] == selection["chosen"]
    assert "latest 10%" in selection["split"]

    plan = result.plan
    data = load_window(cfg, plan)
    manifest = publish.verify_version(Path(plan.publish_root) / "versions" / plan.version)
    w2v = manifest["word2vec"]
    assert w2v["n_sessions"] == data.train_sessions.num_rows  # streamed, held-out skipped
    assert w2v["peak_rss_mb"] > 0 and len(w2v["history"]) == w2v["resolved"]["epochs"]
    assert w2v["resolved"]["derived_from_corpus"]["n_tokens"] > 0
    finetune = manifest["finetune"]
    assert finetune["val_source"] == "validation_sessions"
    # validation pairs: the validation sessions' booking pairs and next-item transitions, pairs
    # of unknown items dropped
    n_transitions = sum(len(s) - 1 for s in data.val_sessions.column("item_ids").to_pylist())
    assert finetune["pairs"] == "both"
    assert 0 < finetune["n_val"] <= data.val_pairs.num_rows + n_transitions
    assert finetune["loss"] == "infonce"
    (name,) = finetune["comparison"]
    assert name == "finetuned_triplet" and finetune["comparison"][name]["loss"] == "triplet"
    assert metrics[name]["n"] == metrics["n_cases"]  # scored on the same test cases


def test_a_crashed_publish_leaves_no_staging_folder_behind_for_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stale = tmp_path / ".tmp" / "20260101-aaaaaaaa-0badc0de"  # a publish killed mid-write
    young = tmp_path / ".tmp" / "20260102-bbbbbbbb-12345678"  # may be one still writing
    for folder in (stale, young):
        folder.mkdir(parents=True)
        (folder / "item_vectors.parquet").write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    with caplog.at_level(logging.WARNING, logger="embedding.vectors.publish"):
        publish.publish_version(tmp_path, "20260103-cccccccc", _vectors(), {}, {})
    assert not stale.exists() and young.exists()
    assert str(stale) in caplog.text
