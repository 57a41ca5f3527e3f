"""``GET /items/{item_id}/similar`` in its common form, answered without FastAPI's machinery.

The hot route's usual request is ``/items/{id}/similar`` with at most ``?k=N``. For it,
FastAPI's routing, dependency resolution and parameter validation, and the middleware wrapped
around each ``send``, cost the event loop more than the HTTP server's own work. This pure ASGI
layer answers that form itself, with the body, status and headers the FastAPI route gives
(``similar_items_body``; ``tests/test_serving_fast_path.py`` compares the two byte for byte).
Everything else passes to the app unchanged: other routes and methods, other parameters or any
``k`` not written as plain digits, an unknown id, no version loaded, a blocklist not yet read.
The app then answers it as it always did (404, 422, 503 and the rest).

It sits inside ``serving.routes.metrics.MetricsMiddleware``, and sets the route in the scope as
the router would, so requests answered here are counted under the route's template.
"""

import json
import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.model import LoadedVersion, Neighbor
from serving.requests import DEFAULT_K, MAX_ID_LENGTH
from serving.searcher import off_loop

SIMILAR_TEMPLATE = "/items/{item_id:path}/similar"
_PATH = re.compile(r"/items/(.+)/similar")
_K = re.compile(rb"k=([1-9][0-9]{0,5})")  # plain digits; anything else is the app's to judge


def _dumps(body: dict[str, Any]) -> bytes:
    """Compact strict JSON (scores are finite: cosines of unit vectors)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def similar_items_body(
    loaded: LoadedVersion, item_id: str, k: int, neighbors: list[Neighbor]
) -> bytes:
    """The JSON body of ``GET /items/{item_id}/similar`` (``serving.schemas.SimilarItems``)."""
    body = {
        "version": loaded.version,
        "item_id": item_id,
        "k": k,
        "neighbors": [
            {"item_id": n.item_id, "score": n.score, "market": n.market} for n in neighbors
        ],
    }
    return _dumps(body)


class SimilarFastPath:
    """Pure ASGI middleware: answers the common form of the neighbour route, passes the rest."""

    def __init__(self, app: ASGIApp, max_k: int) -> None:
        self.app = app
        self.max_k = max_k
        self.default_k = min(DEFAULT_K, max_k)
        self.route: Any = None  # the APIRoute of SIMILAR_TEMPLATE, found on first use
        self.answered = 0  # requests answered here rather than by the app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = None
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            answer = await self._answer(scope)
        if answer is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route(scope)  # what the router sets: metrics read its template
        self.answered += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(answer)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def _answer(self, scope: Scope) -> bytes | None:
        """The body for a request of the common form, or None: the app answers it."""
        match = _PATH.fullmatch(scope["path"])
        if match is None or len(item_id := match.group(1)) > MAX_ID_LENGTH:
            return None
        query = scope["query_string"]
        if query:
            k_match = _K.fullmatch(query)
            if k_match is None:
                return None
            k = min(int(k_match.group(1)), self.max_k)
        else:
            k = self.default_k
        state = scope["app"].state
        loaded: LoadedVersion | None = state.loaded  # taken once: one version per answer
        watcher = state.blocklist
        if loaded is None or not watcher.ready or item_id not in loaded.row_of:
            return None
        blocked = watcher.current.rows_for(loaded)
        neighbors = await off_loop(scope["app"], loaded.similar, item_id, k, blocked_rows=blocked)
        return similar_items_body(loaded, item_id, k, neighbors)

    def _route(self, scope: Scope) -> Any:
        if self.route is None:
            routes = scope["app"].router.routes
            self.route = next(r for r in routes if getattr(r, "path", None) == SIMILAR_TEMPLATE)
        return self.route
