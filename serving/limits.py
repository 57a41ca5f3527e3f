"""Request limits: what one client can make the service read, compute and hold at once.

- **Body size** (``ServingConfig.max_body_bytes``): a larger body is answered 413 before it is
  read, from ``Content-Length``, or as soon as a chunked body passes the cap
  (``BodySizeLimit``, pure ASGI middleware).
- **Cost** (``serving.requests.MAX_NEIGHBORS``): neighbours one request may ask for, as bounds
  the OpenAPI schema states; a batch over them is a 422 naming the cap (request validation).
- **503**: every one carries ``Retry-After`` (``RetryAfterOn503``).
- **Concurrency** (``ServingConfig.max_heavy_requests``): at most that many heavy requests (the
  batch route) run at once; one more is answered 429 with ``Retry-After`` at once, not queued.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_BUSY_S = 1  # Retry-After of a 429
RETRY_UNAVAILABLE_S = 5  # Retry-After of a 503 whose route set none


class RetryAfterOn503:
    """Every 503 carries ``Retry-After`` (routes that know better set their own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", str(RETRY_UNAVAILABLE_S).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


def unparsable_body_as_422(exc: HTTPException) -> dict | None:
    """FastAPI answers a body it cannot decode (not UTF-8, say) with a bare 400; the spec's
    answer to a body that is not valid JSON is a 422 of the usual shape: this is its body, or
    None when ``exc`` is not that case."""
    if exc.status_code != 400 or exc.detail != "There was an error parsing the body":
        return None
    return {
        "detail": [
            {"type": "json_invalid", "loc": ["body"], "msg": "the body is not valid UTF-8 JSON"}
        ]
    }


class BodySizeLimit:
    """413 for a request body over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send)
            return
        received = 0
        too_large = started = False

        async def counted_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to the cut body (FastAPI: a 400) is replaced below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            pass
        if too_large and not started:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {"detail": f"request body larger than the service's limit of {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status.HTTP_413_CONTENT_TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HeavySlots:
    """A counter of heavy requests in flight; no waiting, so no queue builds up behind it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_take(self) -> bool:
        # called on the event loop only: no lock needed between the test and the increment
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


async def heavy_slot(request: Request) -> AsyncIterator[None]:
    """Hold one heavy slot for the request, or answer 429 with Retry-After."""
    slots: HeavySlots = request.app.state.heavy_slots
    if not slots.try_take():
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"{slots.limit} heavy requests are running already; retry shortly",
            headers={"Retry-After": str(RETRY_BUSY_S)},
        )
    try:
        yield
    finally:
        slots.release()


HeavySlotDep = Annotated[None, Depends(heavy_slot)]
