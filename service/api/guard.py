"""Turning exceptions raised inside servicer methods into gRPC statuses.

Servicers raise Chronicle errors; these decorators abort the RPC with the
status ``service.api.status`` chooses. Anything else is a bug: logged with
its traceback, and the client gets INTERNAL without internals.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service.api.status import internal_status, rich_status
from service.errors import ChronicleError

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception, method: str) -> None:
    if isinstance(error, ChronicleError):
        await context.abort_with_status(rich_status(error))
    log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort_with_status(internal_status())


def unary(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    @functools.wraps(method)
    async def guarded(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as error:
            await _abort(context, error, method.__qualname__)
            raise  # not reached: abort raises

    return guarded


def streaming(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def guarded(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as error:
            await _abort(context, error, method.__qualname__)
            raise

    return guarded
