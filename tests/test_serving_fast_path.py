"""The hot route's fast path (``serving.fast_path``): the same answers as the FastAPI route.

Each request is sent twice: in the common form the fast path answers (``?k=5``, no query) and
in a form it passes to the app (``?k=05``: not plain digits, the same value for FastAPI). Body,
status and headers must agree byte for byte; requests it must not answer get the app's errors.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.fast_path import SimilarFastPath
from tests.test_serving import BIG_VERSION, CFG, MAX_K, POPULAR_ITEM, SLASH_ITEM, publish_root

__all__ = ["publish_root"]  # the module fixture, shared with test_serving


@pytest.fixture(scope="module")
def client(publish_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(publish_root, CFG)) as test_client:
        yield test_client


def fast_path(client: TestClient) -> SimilarFastPath:
    """The app's fast-path middleware (the stack is built by the first request)."""
    layer = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, SimilarFastPath):
        layer = layer.app
    return layer


def route_counts(client: TestClient) -> int:
    """Requests counted under the neighbour route's template by GET /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("embedding_request_duration_seconds_count") and "/similar" in line:
            return int(line.rsplit(" ", 1)[1])
    return 0


@pytest.mark.parametrize(
    ("fast", "via_app"),
    [
        ("?k=5", "?k=05"),
        ("", "?k=10&k=10"),  # the default k
        (f"?k={MAX_K + 7}", f"?k=0{MAX_K + 7}"),  # capped at max_k either way
        ("?k=1", "?k=1&exclude=nope"),  # an unknown id excluded: the same answer
    ],
)
@pytest.mark.parametrize("item_id", ["item_00000", POPULAR_ITEM, "hotel%2F7"])
def test_the_fast_path_answers_exactly_as_the_route_does(
    client: TestClient, item_id: str, fast: str, via_app: str
) -> None:
    before = route_counts(client)
    answered = fast_path(client).answered
    answer = client.get(f"/items/{item_id}/similar{fast}")
    assert fast_path(client).answered == answered + 1
    reference = client.get(f"/items/{item_id}/similar{via_app}")
    assert fast_path(client).answered == answered + 1  # the app answered this one

    assert answer.status_code == reference.status_code == 200
    assert answer.content == reference.content
    assert answer.headers["content-type"] == reference.headers["content-type"]
    assert answer.headers["content-length"] == reference.headers["content-length"]
    assert answer.json()["version"] == BIG_VERSION
    assert route_counts(client) == before + 2  # both counted under the route's template


def test_the_slash_id_is_the_one_asked_for(client: TestClient) -> None:
    body = client.get("/items/hotel%2F7/similar?k=3").json()
    assert body["item_id"] == SLASH_ITEM and len(body["neighbors"]) == 3


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/items/nope/similar", 404, "unknown item_id 'nope'"),
        ("/items/nope/similar?k=3", 404, "unknown item_id 'nope'"),
        ("/items/item_00000/similar?k=0", 422, "greater than or equal to 1"),
        ("/items/item_00000/similar?k=x", 422, "valid integer"),
        (f"/items/{'x' * 300}/similar", 422, "at most 256 characters"),
    ],
)
def test_what_it_does_not_answer_gets_the_app_errors(
    client: TestClient, path: str, status: int, detail: str
) -> None:
    answered = fast_path(client).answered
    response = client.get(path)
    assert fast_path(client).answered == answered
    assert response.status_code == status
    assert detail in response.text


def test_without_a_version_it_leaves_the_503_to_the_app(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path, CFG)) as empty:
        response = empty.get("/items/item_00000/similar?k=3")
    assert response.status_code == 503 and "Retry-After" in response.headers
