"""A request's body, read whole: refused before reading when its declared length is over the
limit, bounded in time, and a body that cannot be read as sent (a content coding that does not
decode, a broken chunked encoding) told as the client's error, not taken for the gateway's."""

from __future__ import annotations

import asyncio

from aiohttp import web

BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)


class BodyTimeout(Exception):
    """The client declared more body than it sent in time."""


class BodyUnreadable(Exception):
    """The body as sent cannot be decoded."""


async def read_body(request: web.Request) -> bytes:
    """The whole body, refused before reading when its declared length is over the limit, and
    bounded in time so a client that declares more than it sends cannot hold a request open."""
    limit = request.app._client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_S]):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {request.app[BODY_TIMEOUT_S]:g} s") from None
    except web.RequestPayloadError as exc:
        cause = exc.__cause__ or exc
        coding = request.headers.get("Content-Encoding")
        where = f" (Content-Encoding: {coding})" if coding else ""
        raise BodyUnreadable(f"request body could not be read{where}: {cause}") from None
