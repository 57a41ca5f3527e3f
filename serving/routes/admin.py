"""``POST /admin/reload[?version=]``: load a published version now and swap it in.

It also rereads the blocklist file (``serving.blocklist``), changed or not.

Who may call it: when the env var named by ``ServingConfig.admin_token_env`` holds a token,
only requests with ``Authorization: Bearer <token>``; otherwise only direct loopback clients
(127.0.0.1, ::1) whose request carries no ``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP``
header: behind a reverse proxy on the same host every client looks like loopback, and a proxy
adds one of those. ``python -m serving`` refuses to bind a non-loopback address without a
token. The load is the poller's (``serving.reload.Reloader``): one at a time, in a
worker thread, the old version serving until the new one is complete. A version that fails its
checks answers 409 with the reason and the version still served.
"""

import asyncio
import hmac
import os
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from serving.model import VersionLoadError
from serving.schemas import ErrorDetail, Reloaded, ReloadRefused

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # as serving.model: a folder name, never a path
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")

router = APIRouter(prefix="/admin", tags=["admin"])


def check_access(request: Request) -> None:
    """403 unless the caller holds the admin token, or is loopback when no token is set."""
    token = os.environ.get(request.app.state.serving_cfg.admin_token_env, "")
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail="admin endpoints need 'Authorization: Bearer <token>'",
            )
        return
    host = request.client.host if request.client else None
    if host not in LOOPBACK_HOSTS:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"admin endpoints answer loopback clients only, not {host}",
        )
    proxied = [h for h in PROXY_HEADERS if h in request.headers]
    if proxied:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"admin endpoints answer direct loopback clients only; this request came "
            f"through a proxy ({', '.join(proxied)}): set the admin token to allow it",
        )


@router.post(
    "/reload",
    response_model=Reloaded,
    responses={
        status.HTTP_403_FORBIDDEN: {"model": ErrorDetail},
        status.HTTP_409_CONFLICT: {"model": ReloadRefused},
    },
)
async def reload_version(
    request: Request,
    version: Annotated[
        str | None,
        Query(
            pattern=VERSION_PATTERN,
            max_length=200,
            description="published version id to load (default: the one CURRENT names)",
        ),
    ] = None,
) -> Reloaded | JSONResponse:
    check_access(request)
    reloader = request.app.state.reloader
    if reloader is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="service is starting")
    await asyncio.to_thread(request.app.state.blocklist.check, True, request.app.state.loaded)
    try:
        result = await reloader.load(version)
    except VersionLoadError as exc:
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,
            content=ReloadRefused(detail=str(exc), version=reloader.served_version()).model_dump(),
        )
    return Reloaded(
        version=result.version,
        previous=result.previous,
        changed=result.changed,
        load_s=round(result.load_s, 4),
        blocklist_items=len(request.app.state.blocklist.current),
    )
