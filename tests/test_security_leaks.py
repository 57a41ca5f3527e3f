"""What must never leak or be trusted: the webhook secret in logs, files outside a version
folder named by its manifest, an ANN index the manifest does not vouch for."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import serving.loading
from embedding.alerts import post_webhook
from embedding.core.checksum import file_sha256
from embedding.core.errors import PublishError
from embedding.vectors import publish
from embedding.vectors.ann_index import build_index, save_index
from serving.app import create_app
from serving.model import VersionLoadError
from tests.test_serving_reload import CFG, DIM, V1, write_version


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hooks/T0/B1/s3cr3t-path?token=s3cr3t-query", "s3cr3t-not-a-url"]
)
def test_the_alert_webhook_url_never_reaches_the_logs(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert post_webhook(url, {"text": "ALERT test"}, timeout_s=2) is False
    assert caplog.records, "a failed post is logged"
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize("name", ["/etc/passwd", "../../outside.txt", "sub/../../outside.txt"])
def test_a_manifest_naming_a_file_outside_its_version_is_refused(tmp_path: Path, name: str) -> None:
    version_dir = write_version(tmp_path, V1)
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of any version")
    manifest = json.loads((version_dir / "manifest.json").read_text())
    target = Path(name) if name.startswith("/") else outside
    manifest["files"][name] = file_sha256(target)  # the right checksum: only the name is wrong
    (version_dir / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(PublishError, match="outside the version folder"):
        publish.verify_version(version_dir)


def test_an_index_file_the_manifest_does_not_list_is_never_loaded(tmp_path: Path) -> None:
    version_dir = write_version(tmp_path, V1, n_items=1500)  # above exact search: HNSW
    # a crafted index: a valid FAISS file of the right shape, over other vectors
    rng = np.random.default_rng(99)
    other = rng.normal(size=(1500, DIM)).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    save_index(build_index(other, CFG), version_dir, 1500, DIM, CFG)  # not in the manifest
    loads: list[object] = []
    app = create_app(tmp_path, CFG.model_copy(update={"poll_interval_s": 0}))

    # a version holding a file its manifest does not vouch for is refused whole, by every
    # reader (embedding.vectors.versions): the service does not start on it
    with (
        pytest.MonkeyPatch.context() as patch,
        pytest.raises(VersionLoadError, match=r"does not list ann_index.faiss, ann_index.json"),
    ):
        patch.setattr(serving.loading, "load_index", lambda *a, **k: loads.append(a))
        with TestClient(app):
            pass
    assert loads == []  # the crafted index was never read
