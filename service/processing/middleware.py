"""The pipeline that runs commands inside their middleware.

What middleware is and the order its hooks run in: ``service.plugins.middleware``
(part of the plugin API). A hook that is a plain method runs inline; a
coroutine is awaited. ``Pipeline.start`` runs a command without a coroutine
of its own when the hooks around its success are plain.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial

from service.errors import ChronicleError, HandlerFailed
from service.plugins.middleware import CommandCall, Middleware
from service.principal import ANONYMOUS, Principal
from service.processing.commands import BatchResult, CommandBatch, CommandRequest, CommandResult

log = logging.getLogger(__name__)


def _credential_tenant(principal: Principal) -> str:
    return principal.tenant


def call_for(
    request: CommandRequest,
    principal: Principal,
    *,
    dry_run: bool = False,
    tenant_of: Callable[[Principal], str] = _credential_tenant,
) -> CommandCall:
    """The ``CommandCall`` middleware sees for ``request``."""
    return CommandCall(
        command_id=request.command_id,
        command_type=request.spec.name,
        aggregate_id=request.aggregate_id,
        aggregate_type=request.spec.aggregate.name,
        message=request.message,
        principal=principal,
        user_id=request.user_id,
        origin=request.origin,
        correlation_id=request.correlation_id or request.command_id,
        metadata=request.metadata,
        expected_version=request.expected_version,
        dry_run=dry_run,
        tenant=request.tenant or tenant_of(principal),
    )


Submit = Callable[[CommandRequest], Awaitable[CommandResult]]
SubmitBatch = Callable[[CommandBatch], Awaitable[BatchResult]]
# The router's ``start``: the future of a batch's result, without a coroutine;
# ``finish`` completes that future instead of the worker (worker.Finish).
Start = Callable[..., "asyncio.Future[BatchResult]"]


class Pipeline:
    """Runs ``submit`` for each command (``submit_batch`` for each batch, a
    dry run included) inside the given middleware."""

    def __init__(
        self,
        submit: Submit,
        middleware: Sequence[Middleware] = (),
        *,
        submit_batch: SubmitBatch | None = None,
        start: Start | None = None,
        tenant_of: Callable[[Principal], str] = _credential_tenant,
    ) -> None:
        """``tenant_of``: the tenant a caller acts for (``call.tenant``)."""
        self._tenant_of = tenant_of
        self._submit = submit
        self._submit_batch = submit_batch
        self._start = start
        self.middleware = tuple(middleware)
        # Hooks left as the base class's no-op are not called at all: most
        # middleware needs one or two of the three, and the hot path pays
        # for every call.
        self._befores = tuple(m for m in self.middleware if m.wants("before"))
        self._afters = tuple(m for m in self.middleware if m.wants("after"))
        self._on_errors = tuple(m for m in self.middleware if m.wants("on_error"))
        self._position = {id(m): i for i, m in enumerate(self.middleware)}
        # ``start`` runs a command without a coroutine when the hooks around
        # its success are plain functions (on_error hooks may be coroutines).
        self._can_inline = (
            start is not None
            and not any(inspect.iscoroutinefunction(m.before) for m in self._befores)
            and not any(inspect.iscoroutinefunction(m.after) for m in self._afters)
        )

    async def submit_batch(self, batch: CommandBatch, principal: Principal = ANONYMOUS) -> BatchResult:
        if self._submit_batch is None:
            raise RuntimeError("this pipeline was built without submit_batch")
        calls = [
            call_for(request, principal, dry_run=batch.dry_run, tenant_of=self._tenant_of) for request in batch.commands
        ]
        started = time.perf_counter()
        entered: list[tuple[Middleware, CommandCall]] = []
        refused_by = ""
        try:
            for middleware in self.middleware:
                refused_by = middleware.name
                for index, call in enumerate(calls):
                    await _before(middleware, call, index if len(calls) > 1 or batch.numbered else None)
                    entered.append((middleware, call))
            refused_by = ""
            result = await self._submit_batch(batch)
        except BaseException as error:
            elapsed = time.perf_counter() - started
            for middleware, call in reversed(entered):
                failed = replace(call, error=error, elapsed=elapsed, refused_by=refused_by)
                await _quietly(middleware, middleware.on_error, failed)
            raise
        elapsed = time.perf_counter() - started
        results = dict(zip((c.command_id for c in calls), result.results, strict=True))
        for middleware, call in reversed(entered):
            done = replace(call, result=results[call.command_id], elapsed=elapsed)
            await _quietly(middleware, middleware.after, done)
        return result

    async def submit(self, request: CommandRequest, principal: Principal = ANONYMOUS) -> CommandResult:
        if not self.middleware:
            return await self._submit(request)
        call = call_for(request, principal, tenant_of=self._tenant_of)
        started = time.perf_counter()
        # ``after`` and ``on_error`` run for the middleware whose ``before``
        # ran (or that has none) up to the one that refused, innermost first.
        refusing: Middleware | None = None
        try:
            for middleware in self._befores:
                refusing = middleware
                await _awaited(middleware.before(call))
            refusing = None
            result = await self._submit(request)
        except BaseException as raised:
            error = _as_refusal(refusing, call, raised)
            await self._failed(call, started, error, refusing)
            if error is raised:
                raise
            raise error from raised
        if self._afters:
            done = replace(call, result=result, elapsed=time.perf_counter() - started)
            for middleware in reversed(self._afters):
                await _quietly(middleware, middleware.after, done)
        return result

    async def _failed(
        self, call: CommandCall, started: float, error: BaseException, refusing: Middleware | None
    ) -> None:
        """The on_error hooks of the middleware whose ``before`` ran (or that
        has none) up to the one that refused, innermost first."""
        entered = len(self.middleware) if refusing is None else self._position[id(refusing)]
        refused_by = "" if refusing is None else refusing.name
        failed = replace(call, error=error, elapsed=time.perf_counter() - started, refused_by=refused_by)
        for middleware in reversed(self._on_errors):
            if self._position[id(middleware)] < entered:
                await _quietly(middleware, middleware.on_error, failed)

    def start(
        self, request: CommandRequest, principal: Principal = ANONYMOUS, *, dry_run: bool = False
    ) -> asyncio.Future[BatchResult] | None:
        """``submit`` (``submit_batch`` of one, for a dry run) without a
        coroutine, where the middleware allows (None where it does not). The
        future holds the result as a batch of one, and completes once the
        hooks have run. The command reaches its worker before this returns,
        so commands started in turn run in turn."""
        if not self._can_inline or self._start is None:
            return None
        call = call_for(request, principal, dry_run=dry_run, tenant_of=self._tenant_of)
        started = time.perf_counter()
        refusing: Middleware | None = None
        try:
            for middleware in self._befores:
                refusing = middleware
                middleware.before(call)
            refusing = None
            finish = None
            if self._afters or self._on_errors:
                # The worker calls ``finish`` in its own context, which serves
                # other callers' commands too: the hooks after run in this
                # call's, as its ``before`` hooks left it (a ContextVar a
                # middleware set there, the span tracing keeps).
                finish = partial(self._finish_in, contextvars.copy_context(), call, started)
            return self._start(CommandBatch((request,), dry_run=dry_run), finish=finish)
        except BaseException as error:
            return asyncio.ensure_future(self._refused(call, started, _as_refusal(refusing, call, error), refusing))

    async def _refused(
        self, call: CommandCall, started: float, error: BaseException, refusing: Middleware | None
    ) -> BatchResult:
        await self._failed(call, started, error, refusing)
        raise error

    def _finish_in(
        self,
        context: contextvars.Context,
        call: CommandCall,
        started: float,
        reply: asyncio.Future[BatchResult],
        outcome: BatchResult | BaseException,
    ) -> None:
        context.run(self._finish, call, started, reply, outcome)

    def _finish(
        self,
        call: CommandCall,
        started: float,
        reply: asyncio.Future[BatchResult],
        outcome: BatchResult | BaseException,
    ) -> None:
        """Called by the worker with the command's outcome: the hooks, then
        the reply (after every on_error hook, a coroutine's included)."""
        if isinstance(outcome, BaseException):
            failed = replace(call, error=outcome, elapsed=time.perf_counter() - started)
            rest = self._on_errors_inline(failed)
            if rest is None:
                reply.set_exception(outcome)
            else:  # a hook is a coroutine: the rest of them run in a task, then the caller hears
                failing = asyncio.ensure_future(_then_raise(rest, outcome))
                failing.add_done_callback(partial(_relay, reply))
            return
        if self._afters:
            done = replace(call, result=outcome.results[0], elapsed=time.perf_counter() - started)
            for middleware in reversed(self._afters):
                try:
                    middleware.after(done)
                except Exception:
                    log.exception("middleware %s failed in after for command %s", middleware.name, call.command_id)
        reply.set_result(outcome)

    def _on_errors_inline(self, failed: CommandCall) -> Awaitable[None] | None:
        """Every on_error hook, innermost first, as long as they are plain
        functions; from the first that returns an awaitable, the rest as one
        awaitable (so the order holds)."""
        hooks = list(reversed(self._on_errors))
        for index, middleware in enumerate(hooks):
            try:
                pending = middleware.on_error(failed)
            except Exception:
                log.exception("middleware %s failed in on_error for command %s", middleware.name, failed.command_id)
                continue
            if pending is not None:
                return _rest_of(pending, hooks[index + 1 :], failed)
        return None


async def _rest_of(pending: Awaitable[None], hooks: Sequence[Middleware], failed: CommandCall) -> None:
    try:
        await pending
    except Exception:
        log.exception("middleware failed in on_error for command %s", failed.command_id)
    for middleware in hooks:
        await _quietly(middleware, middleware.on_error, failed)


async def _then_raise(pending: Awaitable[None], error: BaseException) -> BatchResult:
    await pending
    raise error


async def _awaited(outcome: Awaitable[None] | None) -> None:
    if outcome is not None:
        await outcome


def _relay(target: asyncio.Future[BatchResult], source: asyncio.Future[BatchResult]) -> None:
    if source.cancelled():
        if not target.done():
            target.cancel()
        return
    # Retrieved even when no one waits any more (the caller left): an error
    # never retrieved is logged by asyncio as if it were a bug.
    error = source.exception()
    if target.done():
        return
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


async def _before(middleware: Middleware, call: CommandCall, index: int | None) -> None:
    try:
        await _awaited(middleware.before(call))
    except ChronicleError as error:
        if index is not None:
            error.metadata.update(batch_index=str(index), command_id=call.command_id)
        raise
    except Exception as error:
        raise _as_refusal(middleware, call, error) from error


def _as_refusal(middleware: Middleware | None, call: CommandCall, error: BaseException) -> BaseException:
    """What the client hears of ``error``, raised by ``middleware``'s
    ``before`` (None: not by a hook): a refusal it raised as it is, and its
    own bug as MIDDLEWARE_FAILED naming it (logged), rather than a bare
    INTERNAL no one can trace to a middleware."""
    if middleware is None or isinstance(error, ChronicleError) or not isinstance(error, Exception):
        return error
    log.error("middleware %s failed in before for command %s", middleware.name, call.command_id, exc_info=error)
    refusal = HandlerFailed(
        f"middleware {middleware.name} failed before the command: {type(error).__name__}",
        reason="MIDDLEWARE_FAILED",
        metadata={"middleware": middleware.name, "command_type": call.command_type},
    )
    refusal.__cause__ = error
    return refusal


async def _quietly(
    middleware: Middleware, hook: Callable[[CommandCall], Awaitable[None] | None], call: CommandCall
) -> None:
    try:
        await _awaited(hook(call))
    except Exception:
        log.exception("middleware %s failed in %s for command %s", middleware.name, hook.__name__, call.command_id)
