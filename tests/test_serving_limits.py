"""Request limits against a real uvicorn on 127.0.0.1: body size (413), cost (422), heavy
requests in flight (429 with Retry-After), and all of them in the OpenAPI spec."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serving.app import create_app
from tests.test_serving_reload import CFG, V1, serve, write_version

LIMITS = CFG.model_copy(
    update={
        "poll_interval_s": 0,
        "max_body_bytes": 64 * 1024,
        "max_heavy_requests": 1,
    }
)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    write_version(tmp_path, V1, n_items=3000)
    with serve(create_app(tmp_path, LIMITS)) as client:
        yield client


def test_a_body_over_the_cap_is_413_before_it_is_read(client: httpx.Client) -> None:
    huge = b'{"item_ids": ["' + b"x" * (10 * 1024 * 1024) + b'"]}'  # 10 MiB, declared
    declared = client.post("/similar", content=huge, headers={"content-type": "application/json"})

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"item_ids": ["'
        for _ in range(200):
            yield b"y" * 4096
        yield b'"]}'

    streamed = client.post(
        "/similar/batch", content=chunks(), headers={"content-type": "application/json"}
    )
    small = client.post("/similar", json={"item_ids": ["item_00001"], "k": 5})

    for response in (declared, streamed):
        assert response.status_code == 413, response.text[:300]
        assert "65536 bytes" in response.json()["detail"]
    assert small.status_code == 200
    counted = [line for line in client.get("/metrics").text.splitlines() if 'status="413"' in line]
    assert counted and sum(float(line.rsplit(" ", 1)[1]) for line in counted) >= 2


def test_a_batch_above_the_cost_cap_is_422_naming_it(client: httpx.Client) -> None:
    ids = [f"item_{i:05d}" for i in range(1000)]
    over = client.post("/similar/batch", json={"item_ids": ids, "k": 100})  # 100,000
    at = client.post("/similar/batch", json={"item_ids": ids, "k": 10})  # 10,000
    assert over.status_code == 422
    assert "more than 10000 neighbours" in over.json()["detail"][0]["msg"]
    assert at.status_code == 200 and len(at.json()["results"]) == 1000


def test_heavy_requests_beyond_the_bound_are_429_with_retry_after(client: httpx.Client) -> None:
    ids = [f"item_{i:05d}" for i in range(200)]

    def batch(_: int) -> httpx.Response:
        return client.post("/similar/batch", json={"item_ids": ids, "k": 10})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(batch, range(24)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= 1, codes
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
    assert batch(0).status_code == 200  # the slots were all given back


def test_the_limits_are_in_the_openapi_spec(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"413", "422", "429", "503"} <= set(paths["/similar/batch"]["post"]["responses"])
    assert {"413", "422", "503"} <= set(paths["/similar"]["post"]["responses"])
