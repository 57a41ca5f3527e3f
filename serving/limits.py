"""Request limits: what one client can make the service read, compute and hold at once.

- **Body size** (``ServingConfig.max_body_bytes``): a larger body is answered 413 before it is
  read, from ``Content-Length``, or as soon as a chunked body passes the cap
  (``BodySizeLimit``, pure ASGI middleware).
- **Cost** (``ServingConfig.max_neighbors_per_request``): ids x ``k`` (after capping at
  ``max_k``) of one ``POST /similar/batch``; above it, 422 naming the cap.
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


def check_cost(n_queries: int, k: int, cap: int) -> None:
    """422 when ``n_queries`` x ``k`` neighbours exceed ``cap``."""
    if n_queries * k > cap:
        raise HTTPException(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"{n_queries} ids x k={k} = {n_queries * k} neighbours, above the service's "
            f"max_neighbors_per_request={cap}: split the batch or lower k",
        )
