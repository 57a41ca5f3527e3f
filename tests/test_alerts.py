"""Failure alerts: the ALERT line names the run, and the webhook gets it over real HTTP."""

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from embedding.alerts import WEBHOOK_ENV, alert_fields, alert_line, on_failure, post_webhook


def context(error: Exception) -> dict:
    ti = SimpleNamespace(
        dag_id="item_embeddings", task_id="train", run_id="scheduled__x", try_number=3
    )
    return {
        "ti": ti,
        "exception": error,
        "data_interval_start": datetime(2026, 1, 8, tzinfo=UTC),
        "data_interval_end": datetime(2026, 1, 9, tzinfo=UTC),
    }


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict], list[int]]]:
    """A real HTTP server on 127.0.0.1 recording JSON posts; answers the status in ``codes``."""
    received: list[dict] = []
    codes = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(codes[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, codes
    finally:
        server.shutdown()


def test_alert_line_names_dag_task_try_interval_and_error() -> None:
    fields = alert_fields(context(RuntimeError("train process 42 killed by SIGKILL\nmore lines")))

    line = alert_line(fields)

    assert line.startswith("ALERT item_embeddings.train failed (try 3, run scheduled__x, ")
    assert "data interval 2026-01-08 00:00:00+00:00 .. 2026-01-09 00:00:00+00:00" in line
    assert line.endswith("RuntimeError: train process 42 killed by SIGKILL")  # first line only


def test_on_failure_logs_one_line_and_posts_the_webhook(
    webhook: tuple[str, list[dict], list[int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, received, _ = webhook
    monkeypatch.setenv(WEBHOOK_ENV, url)

    with caplog.at_level(logging.ERROR, logger="embedding.alerts"):
        on_failure(context(ValueError("gate failed: HR@10 0.01 < 0.2")))

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage()[:6] for r in errors] == ["ALERT "]
    (payload,) = received
    assert payload["text"].startswith("ALERT item_embeddings.train")
    assert (payload["task_id"], payload["error_type"]) == ("train", "ValueError")


def test_a_failing_webhook_is_logged_not_raised(
    webhook: tuple[str, list[dict], list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _, codes = webhook
    codes[0] = 500
    with caplog.at_level(logging.ERROR, logger="embedding.alerts"):
        assert post_webhook(url, {"text": "x"}) is False
        assert post_webhook("http://127.0.0.1:9/unreachable", {"text": "x"}, 1.0) is False
        assert post_webhook("file:///etc/passwd", {"text": "x"}) is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and "not an http(s) URL" in errors[2].getMessage()
