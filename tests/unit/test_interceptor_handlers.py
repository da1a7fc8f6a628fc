"""Interceptors build the handler they return once per method and inner
handler, not once per RPC; the cache stays bounded."""

from __future__ import annotations

from typing import Any

import grpc

from service.api.interceptors import HandlerCache


async def _behaviour(request: Any, context: Any) -> Any:
    return request


def _handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(_behaviour)


def test_a_handler_is_built_once_per_method_and_inner_handler() -> None:
    cache = HandlerCache()
    built: list[str] = []
    inner, other = _handler(), grpc.unary_stream_rpc_method_handler(_behaviour)

    def build(name: str) -> grpc.RpcMethodHandler:
        built.append(name)
        return _handler()

    first = cache.get("/a", inner, lambda: build("a"))
    assert cache.get("/a", inner, lambda: build("again")) is first
    assert cache.get("/b", inner, lambda: build("b")) is not first
    cache.get("/a", other, lambda: build("a, other inner"))
    assert built == ["a", "b", "a, other inner"]


def test_the_cache_is_bounded_when_inner_handlers_change_every_call() -> None:
    cache = HandlerCache()
    for _ in range(HandlerCache.LIMIT * 3):
        cache.get("/a", _handler(), _handler)
    assert len(cache._handlers) <= HandlerCache.LIMIT
