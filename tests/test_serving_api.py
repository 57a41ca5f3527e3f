"""The neighbour API over TestClient: each endpoint's contract, then a fuzz run over the spec.

The served version holds 600 items in 3 tight, mutually orthogonal clusters (cluster = i % 3)
with markets that cut across them (paris: even i, rome: odd i), so an item's nearest neighbours
are its cluster mates and a market filter changes the answer without emptying it. A second
version, never made current, supplies "another version's vector". Both are small enough for
the exact-search path, so the expected answers are computed here with numpy.
"""

import json
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from embedding.core.checksum import file_sha256
from embedding.core.config import ServingConfig
from serving.app import create_app
from serving.model import LoadedVersion, load_version
from serving.requests import (
    MAX_ID_LENGTH,
    MAX_IDS,
    MAX_IDS_AT_ANY_K,
    MAX_K_LARGE_BATCH,
    MAX_NEIGHBORS,
)
from serving.routes.neighbors import MAX_QUERY_IDS

DIM = 16
N_ITEMS = 600
VERSION = "20260201-aaaa0001"
OTHER_VERSION = "20260115-bbbb0002"
SLASH_ITEM = "hotel/7"  # item 7; reachable as hotel%2F7 by both GET routes
SIMILAR_ITEM = "similar"  # item 5: an id equal to the route's own suffix
MAX_K = 20
CFG = ServingConfig(max_k=MAX_K)


def item_id(i: int) -> str:
    return {7: SLASH_ITEM, 5: SIMILAR_ITEM}.get(i, f"item_{i:05d}")


def write_version(root: Path, version: str, seed: int, *, make_current: bool) -> None:
    """Publish like CONTRACTS §2 (Parquet + manifest with its sha256, then CURRENT)."""
    rng = np.random.default_rng(seed)
    centers, _ = np.linalg.qr(rng.normal(size=(DIM, 3)))  # (DIM, 3) orthonormal columns
    cluster = np.arange(N_ITEMS) % 3
    vectors = centers.T[cluster] + 0.05 * rng.normal(size=(N_ITEMS, DIM))  # (N, DIM)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    version_dir = root / "versions" / version
    version_dir.mkdir(parents=True)
    table = pa.table(
        {
            "item_id": pa.array([item_id(i) for i in range(N_ITEMS)], pa.string()),
            "vector": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32())),
            "market": pa.array(["paris" if i % 2 == 0 else "rome" for i in range(N_ITEMS)]),
            "n_events": pa.array([i % 50 + 1 for i in range(N_ITEMS)], pa.int64()),
            "is_cold_start": pa.array([False] * N_ITEMS, pa.bool_()),
        }
    )
    pq.write_table(table, version_dir / "item_vectors.parquet")
    manifest = {
        "contract_version": 1,
        "version": version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),  # fresh: never stale
        "dim": DIM,
        "n_items": N_ITEMS,
        "files": {"item_vectors.parquet": file_sha256(version_dir / "item_vectors.parquet")},
        "metrics": {"hr@10": 0.5},
    }
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    if make_current:
        (root / "CURRENT").write_text(version + "\n")


def make_publish_root(root: Path) -> Path:
    write_version(root, VERSION, seed=0, make_current=True)
    write_version(root, OTHER_VERSION, seed=1, make_current=False)
    return root


@pytest.fixture(scope="module")
def publish_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_publish_root(tmp_path_factory.mktemp("publish"))


@pytest.fixture(scope="module")
def loaded(publish_root: Path) -> LoadedVersion:
    return load_version(publish_root, VERSION, CFG)


@pytest.fixture(scope="module")
def client(publish_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(publish_root, CFG)) as test_client:  # runs the lifespan
        yield test_client


def brute_force(
    loaded: LoadedVersion,
    query: np.ndarray,
    k: int,
    exclude: Collection[str] = (),
    market: str | None = None,
) -> list[str]:
    """The expected neighbour ids: exact cosine, ties by id, filters applied."""
    query = query / np.linalg.norm(query)
    scores = loaded.vectors.astype(np.float64) @ query  # (N,)
    ranked = sorted(
        (-scores[r], loaded.ids[r])
        for r in range(loaded.n_items)
        if loaded.ids[r] not in exclude and (market is None or loaded.markets[r] == market)
    )
    return [i for _, i in ranked[:k]]


def ids_of(neighbors: list[dict[str, Any]]) -> list[str]:
    return [n["item_id"] for n in neighbors]


# --- GET /items/{item_id}/similar ---------------------------------------------------------------


def test_similar_names_the_version_and_returns_cluster_mates(
    client: TestClient, loaded: LoadedVersion
) -> None:
    response = client.get("/items/item_00000/similar", params={"k": 5})

    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["item_id"], body["k"]) == (VERSION, "item_00000", 5)
    expected = brute_force(loaded, loaded.vectors[0], 5, exclude={"item_00000"})
    assert ids_of(body["neighbors"]) == expected
    assert all(int(i[-5:]) % 3 == 0 for i in expected)  # cluster mates


def test_similar_market_filter_and_exclude(client: TestClient, loaded: LoadedVersion) -> None:
    unfiltered = ids_of(
        client.get("/items/item_00000/similar", params={"k": 4}).json()["neighbors"]
    )
    response = client.get(
        "/items/item_00000/similar",
        params={"k": 4, "market": "rome", "exclude": [*unfiltered[:2], "item_00003", "not_there"]},
    )

    assert response.status_code == 200
    neighbors = response.json()["neighbors"]
    assert {n["market"] for n in neighbors} == {"rome"}
    excluded = {"item_00000", "item_00003", *unfiltered[:2]}
    assert ids_of(neighbors) == brute_force(
        loaded, loaded.vectors[0], 4, exclude=excluded, market="rome"
    )
    assert not excluded & set(ids_of(neighbors))


def test_similar_to_an_unknown_market_is_empty(client: TestClient) -> None:
    response = client.get("/items/item_00000/similar", params={"market": "atlantis"})
    assert (response.status_code, response.json()["neighbors"]) == (200, [])


def test_k_above_max_k_is_capped_and_reported(client: TestClient) -> None:
    body = client.get("/items/item_00000/similar", params={"k": 10**9}).json()
    assert (body["k"], len(body["neighbors"])) == (MAX_K, MAX_K)


@pytest.mark.parametrize("k", ["0", "-1", "ten", "1.5"])
def test_k_below_one_or_not_an_int_is_422(client: TestClient, k: str) -> None:
    response = client.get("/items/item_00000/similar", params={"k": k})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]


def test_similar_to_an_unknown_item_is_a_404_naming_it(client: TestClient) -> None:
    response = client.get("/items/nope/similar")
    assert response.status_code == 404
    assert response.json() == {"detail": f"unknown item_id 'nope' in version {VERSION}"}


def test_oversized_query_parameters_are_422(client: TestClient) -> None:
    long_id = "x" * (MAX_ID_LENGTH + 1)
    assert client.get(f"/items/{long_id}/similar").status_code == 422
    assert client.get("/items/item_00000/similar", params={"market": long_id}).status_code == 422
    many = {"exclude": [f"e{i}" for i in range(MAX_QUERY_IDS + 1)]}
    assert client.get("/items/item_00000/similar", params=many).status_code == 422


# --- GET /items/{item_id} -----------------------------------------------------------------------


def test_get_item_returns_its_vector_and_version(client: TestClient, loaded: LoadedVersion) -> None:
    response = client.get("/items/item_00004")

    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["item_id"], body["market"]) == (VERSION, "item_00004", "paris")
    np.testing.assert_allclose(body["vector"], loaded.vectors[4], rtol=1e-6)
    assert body["is_cold_start"] in (None, False)  # None: the loaded version does not carry it


def test_get_unknown_item_is_404(client: TestClient) -> None:
    response = client.get("/items/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": f"unknown item_id 'nope' in version {VERSION}"}


def test_routes_with_slashes_and_the_similar_suffix(client: TestClient) -> None:
    """'/similar' at the end goes to the similar route, never to GET /items/{id}."""
    assert client.get("/items/hotel%2F7").json()["item_id"] == SLASH_ITEM
    similar = client.get("/items/hotel%2F7/similar", params={"k": 3}).json()
    assert (similar["item_id"], len(similar["neighbors"])) == (SLASH_ITEM, 3)
    assert client.get("/items/similar").json()["item_id"] == SIMILAR_ITEM  # the item "similar"
    assert client.get("/items/similar/similar").json()["item_id"] == SIMILAR_ITEM
    assert client.get("/items/item_00001/similar").json()["item_id"] == "item_00001"


# --- POST /similar ------------------------------------------------------------------------------


def test_similar_to_items_uses_their_mean_and_excludes_them(
    client: TestClient, loaded: LoadedVersion
) -> None:
    inputs = ["item_00000", "item_00003", "item_00006"]
    response = client.post(
        "/similar", json={"item_ids": inputs, "k": 6, "exclude": ["item_00009"], "market": None}
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["k"]) == (VERSION, 6)
    mean = loaded.vectors[[0, 3, 6]].astype(np.float64).mean(axis=0)
    assert ids_of(body["neighbors"]) == brute_force(
        loaded, mean, 6, exclude={*inputs, "item_00009"}
    )
    assert not set(inputs) & set(ids_of(body["neighbors"]))


def test_similar_to_items_with_market_and_capped_k(client: TestClient) -> None:
    body = client.post(
        "/similar", json={"item_ids": ["item_00001"], "k": 1000, "market": "paris"}
    ).json()
    assert (body["k"], len(body["neighbors"])) == (MAX_K, MAX_K)
    assert {n["market"] for n in body["neighbors"]} == {"paris"}


def test_similar_to_unknown_items_is_a_404_listing_them(client: TestClient) -> None:
    response = client.post("/similar", json={"item_ids": ["item_00000", "nope", "nada"]})
    assert response.status_code == 404
    assert response.json() == {"detail": f"unknown item_ids 'nope', 'nada' in version {VERSION}"}


def test_similar_to_a_vector_of_the_served_version(
    client: TestClient, loaded: LoadedVersion
) -> None:
    vector = client.get("/items/item_00002").json()["vector"]
    scaled = [1e300 * x for x in vector]  # large but finite: its norm must not overflow

    for query in (vector, scaled):
        response = client.post("/similar", json={"vector": query, "version": VERSION, "k": 4})
        assert response.status_code == 200
        body = response.json()
        assert (body["version"], body["k"]) == (VERSION, 4)
        assert ids_of(body["neighbors"]) == brute_force(loaded, loaded.vectors[2], 4)
        assert body["neighbors"][0]["item_id"] == "item_00002"  # the query is not excluded


def test_vector_of_another_version_is_409(client: TestClient, publish_root: Path) -> None:
    other = load_version(publish_root, OTHER_VERSION, CFG)
    response = client.post(
        "/similar", json={"vector": other.vectors[0].tolist(), "version": OTHER_VERSION}
    )
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert OTHER_VERSION in detail and VERSION in detail


def test_vector_of_wrong_dim_is_409_and_all_zeros_is_422(client: TestClient) -> None:
    # another dim cannot come from the served version: a conflict, as another version's vector
    wrong_dim = client.post("/similar", json={"vector": [0.1] * (DIM - 1), "version": VERSION})
    zeros = client.post("/similar", json={"vector": [0.0] * DIM, "version": VERSION})
    assert wrong_dim.status_code == 409 and "expected (16,)" in wrong_dim.json()["detail"]
    assert zeros.status_code == 422 and "all zeros" in json.dumps(zeros.json()["detail"])


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", '"nan"', "1e400"])
def test_non_finite_vector_is_422(client: TestClient, bad: str) -> None:
    values = ", ".join(["0.5"] * (DIM - 1) + [bad])
    content = f'{{"vector": [{values}], "version": "{VERSION}"}}'
    response = client.post(
        "/similar", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "vector", DIM - 1]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"k": 3},
        {"item_ids": ["item_00000"], "vector": [1.0] * DIM, "version": VERSION},
        {"vector": [1.0] * DIM},  # no version
        {"item_ids": ["item_00000"], "version": VERSION},
        {"item_ids": []},
        {"item_ids": ["item_00000"] * (MAX_IDS + 1)},
        {"item_ids": ["x" * (MAX_ID_LENGTH + 1)]},
        {"item_ids": ["item_00000"], "k": 0},
        {"item_ids": ["item_00000"], "itemids": ["item_00001"]},  # misspelt field
        {"item_ids": "item_00000"},
        {"vector": ["a"] * DIM, "version": VERSION},
    ],
)
def test_malformed_similar_bodies_are_422(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/similar", json=body).status_code == 422


# --- POST /similar/batch ------------------------------------------------------------------------


def test_batch_answers_known_ids_and_lists_unknown(
    client: TestClient, loaded: LoadedVersion
) -> None:
    asked = ["item_00010", "nope", SLASH_ITEM, "nada", "item_00010"]
    response = client.post("/similar/batch", json={"item_ids": asked, "k": 3, "market": "paris"})

    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["k"], body["unknown"]) == (VERSION, 3, ["nope", "nada"])
    assert [r["item_id"] for r in body["results"]] == ["item_00010", SLASH_ITEM, "item_00010"]
    for result in body["results"]:
        row = loaded.row_of[result["item_id"]]
        expected = brute_force(
            loaded, loaded.vectors[row], 3, exclude={result["item_id"]}, market="paris"
        )
        assert ids_of(result["neighbors"]) == expected


def test_batch_up_to_the_cost_cap_with_capped_k_and_over_it_422(client: TestClient) -> None:
    # the cap: 10,000 neighbours, as 100 ids at any k (capped at max_k <= 100) or 1000 at k <= 10
    some = [item_id(i % N_ITEMS) for i in range(MAX_IDS_AT_ANY_K)]
    body = client.post("/similar/batch", json={"item_ids": some, "k": 500}).json()
    assert (body["version"], body["k"], body["unknown"]) == (VERSION, MAX_K, [])
    assert len(body["results"]) == MAX_IDS_AT_ANY_K
    assert {len(r["neighbors"]) for r in body["results"]} == {MAX_K}
    most = [item_id(i % N_ITEMS) for i in range(MAX_IDS)]
    body = client.post("/similar/batch", json={"item_ids": most, "k": MAX_K_LARGE_BATCH}).json()
    assert len(body["results"]) == MAX_IDS
    assert {len(r["neighbors"]) for r in body["results"]} == {MAX_K_LARGE_BATCH}

    over = client.post("/similar/batch", json={"item_ids": [*some, some[0]], "k": 11})
    assert over.status_code == 422
    (error,) = over.json()["detail"]  # the validation shape the spec documents
    assert "cost cap" in error["msg"] and str(MAX_NEIGHBORS) in error["msg"]


@pytest.mark.parametrize(
    "body",
    [
        {"item_ids": []},
        {"item_ids": ["item_00000"] * (MAX_IDS + 1)},
        {"item_ids": ["item_00000"], "k": -3},
        {"item_ids": ["item_00000"], "exclude": []},  # not a batch field
        {"item_ids": [1, 2]},
    ],
)
def test_malformed_batch_bodies_are_422(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/similar/batch", json=body).status_code == 422


def test_every_endpoint_is_503_before_a_version_is_published(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path, CFG)) as test_client:
        responses = [
            test_client.get("/items/item_00000/similar"),
            test_client.get("/items/item_00000"),
            test_client.post("/similar", json={"item_ids": ["item_00000"]}),
            test_client.post("/similar", json={"vector": [1.0] * DIM, "version": VERSION}),
            test_client.post("/similar/batch", json={"item_ids": ["item_00000"]}),
        ]
    assert [r.status_code for r in responses] == [503] * 5


# --- fuzz: every operation of the OpenAPI spec, random and malformed inputs ---------------------

SPEC = create_app(Path("unused-publish-root"), CFG).openapi()  # the spec needs no version
OPERATIONS = sorted(
    (path, method)
    for path, methods in SPEC["paths"].items()
    for method in methods
    if method in {"get", "post", "put", "patch", "delete"}
)
EXAMPLES_PER_OPERATION = 100  # x the 4 neighbour operations alone: 400 requests
KNOWN_STRINGS = [item_id(i) for i in (0, 1, 2, 5, 7)] + [VERSION, OTHER_VERSION, "paris", "rome"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: sent as the JSON extensions NaN, Infinity
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
strings = st.text(max_size=40) | st.sampled_from(KNOWN_STRINGS) | st.just("x" * 300)
ints = (
    st.integers(min_value=-3, max_value=MAX_K + 3)
    | st.integers()
    | st.sampled_from([2**31, 2**63, -(2**63) - 1, 10**30])
)
numbers = (
    st.floats()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([1e308, -1e308, 5e-324, 0.0])
)


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def from_schema(
    schema: dict[str, Any], strict: bool = False, depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values shaped like ``schema``, often out of its bounds.

    ``strict``: every value has the schema's type (so many bodies pass validation and reach
    the handler); otherwise any value may be of a wrong type and objects get extra keys.
    """
    schema = resolve(schema)
    wrong = st.nothing() if strict else json_values if depth < 3 else st.none()
    if "anyOf" in schema:
        return st.one_of([from_schema(s, strict, depth) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = {
            name: from_schema(s, strict, depth + 1) for name, s in schema["properties"].items()
        }
        shaped = st.fixed_dictionaries({}, optional=props)
        if strict:  # also a few keys only: mutually exclusive fields are then often valid
            few_keys = st.lists(st.sampled_from(sorted(props)), unique=True, max_size=3)
            return shaped | few_keys.flatmap(
                lambda keys: st.fixed_dictionaries({key: props[key] for key in keys})
            )
        with_extra = st.tuples(shaped, st.text(max_size=8), json_values).map(
            lambda t: {**t[0], t[1]: t[2]}
        )
        return st.one_of(shaped, shaped, with_extra, wrong)
    if kind == "array":
        items = from_schema(schema.get("items", {}), strict, depth + 1)
        if resolve(schema.get("items", {})).get("type") == "number":  # vectors: near DIM
            sized = st.integers(min_value=0, max_value=DIM + 2).flatmap(
                lambda n: st.lists(numbers, min_size=n, max_size=n)
            )
            unit = st.floats(min_value=-1, max_value=1)
            plausible = st.lists(unit, min_size=DIM, max_size=DIM) if strict else st.nothing()
            full = st.lists(numbers, min_size=DIM, max_size=DIM)
            return st.one_of(plausible, plausible, sized, full, wrong)
        long_list = st.integers(min_value=MAX_IDS - 1, max_value=MAX_IDS + 1).map(
            lambda n: [item_id(i % N_ITEMS) for i in range(n)]
        )
        return st.one_of(st.lists(items, max_size=6), long_list, wrong)
    plausible = {  # in strict mode, half the leaves are in range: more bodies reach the handler
        "string": st.sampled_from(KNOWN_STRINGS),
        "integer": st.integers(min_value=1, max_value=2 * MAX_K),
    }
    leaf = {
        "string": strings,
        "integer": ints,
        "number": numbers,
        "boolean": st.booleans(),
        "null": st.none(),
    }.get(kind, json_values)
    if strict and kind in plausible:
        return st.one_of(plausible[kind], leaf)
    return st.one_of(leaf, leaf, wrong)


def query_value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A query parameter's value: its type, out of range, or any text."""
    schema = resolve(schema)
    if "anyOf" in schema:
        return st.one_of([query_value(s) for s in schema["anyOf"] if s.get("type") != "null"])
    if schema.get("type") == "array":
        many = st.integers(min_value=MAX_IDS - 1, max_value=MAX_IDS + 1).map(
            lambda n: [f"e{i}" for i in range(n)]
        )
        return st.lists(strings, max_size=5) | many
    if schema.get("type") == "integer":
        return ints.map(str) | st.text(max_size=8) | st.just("1e3")
    return strings


def seed_bodies() -> dict[str, list[dict[str, Any]]]:
    vector = [1.0] + [0.0] * (DIM - 1)
    return {
        "/similar": [
            {"item_ids": ["item_00000", SLASH_ITEM], "k": 5},
            {"vector": vector, "version": VERSION, "market": "rome"},
            {"vector": vector, "version": OTHER_VERSION},
        ],
        "/similar/batch": [{"item_ids": ["item_00000", "nope"], "k": 3, "market": "paris"}],
    }


def seeded_bodies(path: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid body for ``path`` with one field replaced or dropped: reaches the handler."""
    seeds = seed_bodies().get(path)
    properties = resolve(schema).get("properties")
    if not seeds or not properties:
        return st.nothing()
    field_values = st.sampled_from(sorted(properties)).flatmap(
        lambda name: st.tuples(st.just(name), from_schema(properties[name], strict=True))
    )
    return st.tuples(st.sampled_from(seeds), st.booleans(), field_values).map(
        lambda t: (
            {**t[0], t[2][0]: t[2][1]}
            if t[1]
            else {key: value for key, value in t[0].items() if key != t[2][0]}
        )
    ) | st.sampled_from(seeds)


@st.composite
def requests_for(draw: st.DrawFn, path: str, method: str) -> dict[str, Any]:
    """``path`` with its parameters filled in, a query string and maybe a body."""
    operation = SPEC["paths"][path][method]
    url = path
    params: dict[str, Any] = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            value = draw(st.text() | st.sampled_from(KNOWN_STRINGS))
            url = url.replace("{" + parameter["name"] + "}", quote(value, safe=""))
        elif parameter["in"] == "query" and draw(st.booleans()):
            params[parameter["name"]] = draw(query_value(parameter["schema"]))
    request: dict[str, Any] = {"method": method.upper(), "url": url, "params": params}
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        body = draw(
            st.one_of(
                seeded_bodies(path, schema),
                from_schema(schema, strict=True),
                from_schema(schema),
                json_values,
                st.binary(max_size=64),
            )
        )
        request["content"] = body if isinstance(body, bytes) else json.dumps(body)
        request["headers"] = {"content-type": "application/json"}
    return request


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app of its own: whatever a fuzzed admin route does stays out of the other tests.

    The client claims a loopback address, so loopback-only (admin) routes are fuzzed too.
    """
    root = make_publish_root(tmp_path_factory.mktemp("fuzz-publish"))
    app = create_app(root, CFG)
    with TestClient(app, client=("127.0.0.1", 50000)) as test_client:  # server errors raise
        yield test_client


def test_spec_covers_the_neighbour_endpoints() -> None:
    neighbour_operations = {
        ("/items/{item_id}/similar", "get"),
        ("/items/{item_id}", "get"),
        ("/similar", "post"),
        ("/similar/batch", "post"),
    }
    assert neighbour_operations <= set(OPERATIONS)
    assert len(neighbour_operations) * EXAMPLES_PER_OPERATION >= 300


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_request_is_a_server_error(
    fuzz_client: TestClient, path: str, method: str, data: st.DataObject
) -> None:
    request = data.draw(requests_for(path, method), label="request")
    response = fuzz_client.request(**request)
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code < 500, (request, response.status_code, response.text[:500])


# --- the same fuzz over HTTP, against the real `python -m serving` process ------------------------

HTTP_FUZZ_REQUESTS = 10_000  # over every operation, oversized bodies, headers and URLs included
OVERSIZE = {
    "body": lambda request: {**request, "content": b"[" + b"0," * 1_200_000 + b"0]"},  # 2.4 MB
    "header": lambda request: {**request, "headers": {**request.get("headers", {}),
                                                      "x-pad": "a" * 300_000}},
}  # fmt: skip


def raw_status(base_url: str, head: bytes) -> int:
    """The status code the server answers to ``head`` sent as is (httpx refuses long URLs)."""
    import socket

    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.slow
def test_the_real_service_answers_every_fuzzed_request_over_http_as_its_spec_says(
    tmp_path: Path,
) -> None:
    from collections import Counter

    import httpx

    from serving.probe import running_service

    root = make_publish_root(tmp_path / "publish")
    statuses: Counter[tuple[str, str, int]] = Counter()
    per_operation = 300
    with running_service(root) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        spec = client.get("/openapi.json").json()

        def fuzz(path: str, method: str, data: st.DataObject) -> None:
            request = data.draw(requests_for(path, method), label="request")
            oversize = data.draw(st.sampled_from([None] * 20 + sorted(OVERSIZE)), label="size")
            if oversize is not None:
                request = OVERSIZE[oversize](request)
            # an id "." or ".." would be a dot segment, which clients remove before sending
            request["url"] = "/".join(
                part.replace(".", "%2E") if set(part) == {"."} else part
                for part in request["url"].split("/")
            )
            response = client.request(**request)
            statuses[(path, method, response.status_code)] += 1
            documented = spec["paths"][path][method]["responses"]
            assert response.status_code < 500, (request["url"], response.text[:300])
            assert str(response.status_code) in documented, (
                path, method, response.status_code, response.text[:300]
            )  # fmt: skip
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1

        # rounds with fixed seeds: operations with few inputs (GET /health) exhaust a round
        # early, so rounds go on until the total is reached; the same requests every run
        for round_seed in range(100):
            for path, method in OPERATIONS:
                run = settings(
                    max_examples=per_operation,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )(seed(round_seed)(given(data=st.data())(fuzz)))
                run(path, method)
            if sum(statuses.values()) >= HTTP_FUZZ_REQUESTS:
                break
        for path, method in OPERATIONS:
            # a request line over the server's limit: a 400 from the server, as documented
            url = path.replace("{item_id}", "item_00000") + "?pad=" + "b" * 300_000
            head = f"{method.upper()} {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            status = raw_status(base_url, head)
            statuses[(path, method, status)] += 1
            assert str(status) in spec["paths"][path][method]["responses"], (path, status)

    assert sum(statuses.values()) >= HTTP_FUZZ_REQUESTS
    seen = {code for _, _, code in statuses}
    assert {200, 400, 404, 413, 422} <= seen, statuses  # the fuzz reached the handlers too
