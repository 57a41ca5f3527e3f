"""``GET /metrics`` (Prometheus text format) and the app-wide NaN-safe 422.

The text is parsed line by line here (``name{labels} value``), so a malformed line fails the
test rather than a scraper in production. Each test gets a fresh app: counters start at zero.
"""

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from test_serving_api import CFG, N_ITEMS, OTHER_VERSION, VERSION, make_publish_root

from serving.app import create_app

SIMILAR_ROUTE = "/items/{item_id:path}/similar"
DURATION = "embedding_request_duration_seconds"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, dict[str, str], float]


def parse(text: str) -> list[Sample]:
    """Every sample line as (name, labels, value); fails on any line of another shape."""
    samples: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* ", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, raw_labels, value = match.groups()
        labels: dict[str, str] = {}
        if raw_labels:
            pairs = LABEL.findall(raw_labels)
            assert ",".join(f'{k}="{v}"' for k, v in pairs) == raw_labels, line
            labels = dict(pairs)
        samples.append((name, labels, float(value)))
    return samples


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [v for n, lab, v in samples if n == name and lab == labels]
    assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
    return found[0] if found else None


def scrape(client: TestClient) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


@pytest.fixture(scope="module")
def publish_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_publish_root(tmp_path_factory.mktemp("publish"))


@pytest.fixture
def client(publish_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(publish_root, CFG), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


def test_requests_counted_and_timed_by_route_template(client: TestClient) -> None:
    assert client.get("/items/item_00000/similar").status_code == 200
    assert client.get("/items/item_00003/similar", params={"k": 3}).status_code == 200
    assert client.get("/items/no_such_item/similar").status_code == 404
    assert client.get("/items/item_00000/similar", params={"k": 0}).status_code == 422
    assert client.get("/no/such/route").status_code == 404

    samples = scrape(client)

    total = "embedding_requests_total"
    assert value(samples, total, route=SIMILAR_ROUTE, method="GET", status="200") == 2
    assert value(samples, total, route=SIMILAR_ROUTE, method="GET", status="404") == 1
    assert value(samples, total, route=SIMILAR_ROUTE, method="GET", status="422") == 1
    assert value(samples, total, route="<unmatched>", method="GET", status="404") == 1
    label_values = [v for _, labels, _ in samples for v in labels.values()]
    assert not any("item_0" in v or "no_such" in v or "/no/" in v for v in label_values)

    route_buckets = [
        v for n, lab, v in samples if n == f"{DURATION}_bucket" and lab["route"] == SIMILAR_ROUTE
    ]
    assert len(route_buckets) == 12
    assert route_buckets == sorted(route_buckets)  # cumulative
    assert route_buckets[-1] == 4
    assert value(samples, f"{DURATION}_bucket", route=SIMILAR_ROUTE, le="+Inf") == 4
    assert value(samples, f"{DURATION}_count", route=SIMILAR_ROUTE) == 4
    duration_sum = value(samples, f"{DURATION}_sum", route=SIMILAR_ROUTE)
    assert duration_sum is not None and 0 < duration_sum < 60


def test_served_version_gauges(client: TestClient) -> None:
    samples = scrape(client)

    assert value(samples, "embedding_version_info", version=VERSION) == 1
    age = value(samples, "embedding_version_age_seconds")
    assert age is not None and 0 <= age < 3600  # the fixture's manifest is fresh
    assert value(samples, "embedding_index_items") == N_ITEMS
    assert value(samples, "embedding_reloads_total", outcome="ok") == 0
    assert value(samples, "embedding_reloads_total", outcome="refused") == 0


def test_metrics_without_a_version(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path, CFG)) as client:
        assert client.get("/health").status_code == 503
        samples = scrape(client)

    names = {name for name, _, _ in samples}
    assert not names & {
        "embedding_version_info",
        "embedding_version_age_seconds",
        "embedding_index_items",
    }
    total = "embedding_requests_total"
    assert value(samples, total, route="/health", method="GET", status="503") == 1


def test_reloads_counted_by_outcome(client: TestClient) -> None:
    assert client.post("/admin/reload", params={"version": OTHER_VERSION}).status_code == 200
    assert client.post("/admin/reload", params={"version": "20990101-00000000"}).status_code == 409

    samples = scrape(client)

    assert value(samples, "embedding_reloads_total", outcome="ok") == 1
    assert value(samples, "embedding_reloads_total", outcome="refused") == 1
    assert value(samples, "embedding_version_info", version=OTHER_VERSION) == 1
    assert value(samples, "embedding_version_info", version=VERSION) is None


def strict_json(text: str) -> object:
    def reject(constant: str) -> object:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


class Body(BaseModel):
    count: int


@pytest.mark.parametrize("raw", ['{"count": NaN}', '{"count": Infinity}', '{"count": -Infinity}'])
def test_non_finite_body_gives_json_422_on_any_route(publish_root: Path, raw: str) -> None:
    app = create_app(publish_root, CFG)

    @app.post("/plain")  # a plain APIRoute: only the app-level handler protects it
    def plain(body: Body) -> dict[str, int]:
        return {"count": body.count}

    with TestClient(app, raise_server_exceptions=False) as client:
        plain_response = client.post(
            "/plain", content=raw, headers={"content-type": "application/json"}
        )
        similar = client.post(
            "/similar",
            content=f'{{"vector": [NaN, 1.0], "version": "{VERSION}"}}',
            headers={"content-type": "application/json"},
        )
        samples = scrape(client)

    for response in (plain_response, similar):
        assert response.status_code == 422, response.text
        body = strict_json(response.text)
        assert isinstance(body, dict) and body["detail"]
    echoed = plain_response.json()["detail"][0]["input"]
    assert isinstance(echoed, str) and not math.isfinite(float(echoed))
    assert value(samples, "embedding_requests_total", route="/plain", method="POST", status="422")
