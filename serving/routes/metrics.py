"""``GET /metrics``: request counts, latencies and the served version, in Prometheus text format.

Exposed (text exposition format 0.0.4, written here: no client library):

- ``embedding_requests_total{route,method,status}`` counter;
- ``embedding_request_duration_seconds{route}`` histogram (``_bucket``/``_sum``/``_count``);
- ``embedding_version_info{version}`` (1), ``embedding_version_age_seconds`` (from the
  manifest's ``created_at``) and ``embedding_index_items``: only while a version is loaded;
- ``embedding_reloads_total{outcome="ok|refused"}``: hot reloads (poller and
  ``POST /admin/reload``), not the startup load;
- ``embedding_blocklist_items``: ids on the blocklist in force, when a blocklist is configured.

``route`` is the route's template (``/items/{item_id:path}/similar``), never the raw path, so
the label set stays bounded; requests no route matched share ``route="<unmatched>"``.
``MetricsMiddleware`` is pure ASGI: per request one ``perf_counter`` pair, a bisect and a short
critical section under a lock (handlers run in a threadpool, the middleware on the event loop).
"""

import threading
import time
from bisect import bisect_left

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.model import LoadedVersion
from serving.routes.health import age_s

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UNMATCHED = "<unmatched>"
RELOAD_OUTCOMES = ("ok", "refused")

router = APIRouter(tags=["metrics"])


class Metrics:
    """Thread-safe counters for one app; ``render`` writes them as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        # per route: [per-bucket counts (len(BUCKETS) + 1, the last one +Inf), sum, count]
        self._durations: dict[str, list] = {}
        self._reloads: dict[str, int] = dict.fromkeys(RELOAD_OUTCOMES, 0)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        slot = bisect_left(BUCKETS, seconds)  # first bucket with le >= seconds
        key = (route, method, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            hist = self._durations.get(route)
            if hist is None:
                hist = self._durations[route] = [[0] * (len(BUCKETS) + 1), 0.0, 0]
            hist[0][slot] += 1
            hist[1] += seconds
            hist[2] += 1

    def count_reload(self, outcome: str) -> None:
        with self._lock:
            self._reloads[outcome] = self._reloads.get(outcome, 0) + 1

    def render(self, loaded: LoadedVersion | None, blocklist_items: int | None = None) -> str:
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted((r, [list(h[0]), h[1], h[2]]) for r, h in self._durations.items())
            reloads = sorted(self._reloads.items())
        lines: list[str] = []
        _family(lines, "embedding_requests_total", "counter", "HTTP requests answered.")
        for (route, method, status), n in requests:
            lines.append(
                f"embedding_requests_total{_labels(route=route, method=method, status=status)} {n}"
            )
        name = "embedding_request_duration_seconds"
        _family(lines, name, "histogram", "Time to answer a request, by route template.")
        for route, (counts, total, count) in durations:
            cumulative = 0
            for le, n in zip((*map(_number, BUCKETS), "+Inf"), counts, strict=True):
                cumulative += n
                lines.append(f"{name}_bucket{_labels(route=route, le=le)} {cumulative}")
            lines.append(f"{name}_sum{_labels(route=route)} {_number(total)}")
            lines.append(f"{name}_count{_labels(route=route)} {count}")
        _family(lines, "embedding_reloads_total", "counter", "Hot reloads, by outcome.")
        for outcome, n in reloads:
            lines.append(f"embedding_reloads_total{_labels(outcome=outcome)} {n}")
        if loaded is not None:
            _family(lines, "embedding_version_info", "gauge", "The version served (always 1).")
            lines.append(f"embedding_version_info{_labels(version=loaded.version)} 1")
            age = age_s(loaded)
            if age is not None:
                _family(
                    lines,
                    "embedding_version_age_seconds",
                    "gauge",
                    "Seconds since the served version's manifest created_at.",
                )
                lines.append(f"embedding_version_age_seconds {_number(age)}")
            _family(lines, "embedding_index_items", "gauge", "Items in the served version.")
            lines.append(f"embedding_index_items {loaded.n_items}")
        if blocklist_items is not None:
            _family(lines, "embedding_blocklist_items", "gauge", "Ids on the blocklist in force.")
            lines.append(f"embedding_blocklist_items {blocklist_items}")
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before starting a response
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # set in place by the router once it matched
            template = getattr(route, "path", None) or UNMATCHED
            self.metrics.observe(template, scope["method"], status, time.perf_counter() - started)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    blocklist = request.app.state.blocklist
    items = None if blocklist.path is None else len(blocklist.current)
    body = request.app.state.metrics.render(request.app.state.loaded, items)
    return Response(content=body, media_type=CONTENT_TYPE)


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value))
