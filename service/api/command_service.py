"""``chronicle.v1.CommandService``: decode, hand to the pipeline, encode. No
business logic. A command that does not decode is audited through
``RefusedCommands``, as the gate's refusals are, and counted (``counted``:
the metrics) as a command refused, as the pipeline's refusals are; an
accepted command pays nothing for either."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from functools import partial
from typing import Any, TypeAlias

import grpc

from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from chronicle.v1.command_pb2 import Command
from service.api.cluster_service import not_owner_hint
from service.api.codec import MAX_BATCH_COMMANDS, decode_batch, decode_command, encode_event_into, type_name
from service.api.disclosure import Disclosure
from service.api.dry_runs import DryRunAudit
from service.api.rate_limits import RateLimits
from service.api.refused_commands import SUBMIT_BATCH_METHOD, SUBMIT_METHOD, RefusedCommands, refused_commands
from service.api.status import command_error
from service.cluster.ownership import Ownership
from service.errors import (
    ChronicleError,
    FieldViolation,
    InvalidInput,
    RateLimited,
    StoreUnavailable,
    ValidationError,
)
from service.plugins.registry import Registry
from service.principal import Principal, current_principal
from service.processing.commands import (
    BatchResult,
    CommandBatch,
    CommandRequest,
    CommandResult,
    fingerprint_of_unregistered,
)
from service.processing.middleware import Pipeline
from service.processing.replay import Replayer, SentCommand
from service.security.policy import Authorizer

log = logging.getLogger(__name__)
UNKNOWN_COMMAND_TYPE = "UNKNOWN_COMMAND_TYPE"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# Commands of one SubmitStream started and not yet answered: at most this
# many, and while they carry less than STREAM_IN_FLIGHT_BYTES (one always
# goes, however large), so that one stream of large commands holds megabytes,
# not 256 times the largest message.
STREAM_IN_FLIGHT = 256
STREAM_IN_FLIGHT_BYTES = 16 * 1024 * 1024
# Told of each command refused as its request was decoded, before the
# pipeline: its type as sent (empty when it names none), its aggregate id as
# sent (for the per-tenant counts) and the refusal.
CountRefused = Callable[[str, str, ChronicleError], None]


class CommandService(pb_grpc.CommandServiceServicer):
    def __init__(
        self,
        registry: Registry,
        pipeline: Pipeline,
        refused: RefusedCommands,
        disclosure: Disclosure,
        dry_runs: DryRunAudit,
        *,
        page_bytes: int,
        ownership: Ownership | None = None,
        stream_bytes: int = STREAM_IN_FLIGHT_BYTES,
        room_for: Callable[[str], asyncio.Future[None] | None] | None = None,
        counted: CountRefused | None = None,
        authorizer: Authorizer | None = None,
        replayer: Replayer | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        """``page_bytes``: a SubmitResultPage is closed once its answers pass
        this many bytes (the application's bound of every page).
        ``stream_bytes``: a stream stops reading while its started,
        unanswered commands carry this many bytes. ``room_for``: None while
        an aggregate's queue has room, else a future done once it has (the
        router's): a stream waits on it before it starts a command.
        ``counted``: told of each command refused as it was decoded (once
        per command the audit records).
        ``authorizer``: which aggregate types ListTypes shows a caller
        (None: every one). ``replayer``: answers a retry of a command whose
        type is no longer registered from its record (None: refused
        UNKNOWN_COMMAND_TYPE like any other). ``rate_limits``: each
        principal's commands per second (None, or not ``on``: no limit, no
        bucket looked up): a unary call over it is refused, a stream waits."""
        self._registry = registry
        self._authorizer = authorizer
        self._pipeline = pipeline
        self._refused = refused
        self._disclosure = disclosure
        self._dry_runs = dry_runs
        self._ownership = ownership
        self._page_bytes = page_bytes
        self._stream_bytes = stream_bytes
        self._room_for = room_for
        self._counted = counted
        self._replayer = replayer
        self._rate_limits = rate_limits
        # The readers of the command streams open now; ``close`` stops them.
        self._readers: set[asyncio.Task[None]] = set()
        self._closing = False

    def close(self) -> None:
        """The server stops (after its drain): every command stream takes no
        more commands, answers those it started, and ends UNAVAILABLE
        (SHUTTING_DOWN), so its client sends the rest to another member
        now rather than when the shutdown grace runs out; a stream opened
        from now on is refused so."""
        self._closing = True
        for reader in list(self._readers):
            reader.cancel()

    def _hint(self, context: grpc.aio.ServicerContext[Any, Any], aggregate_id: str) -> None:
        """Tell a routing client when this member does not own the
        aggregate's partition (service/api/cluster_service.py)."""
        if self._ownership is not None:
            hint = not_owner_hint(self._ownership, aggregate_id)
            if hint is not None:
                context.set_trailing_metadata(hint)

    def _start(self, request: pb.SubmitRequest, principal: Principal, context: Context) -> Awaitable[BatchResult]:
        """One Submit, as a unary call or one message of a stream, under way.

        A well-formed command on a warm aggregate is decided before this
        returns (the pipeline's ``start``, the worker's inline path): the
        result is a future, and no coroutine or task is made for it. Anything
        else (a refusal to audit, a dry run, middleware with coroutine hooks)
        is an awaitable of the same result."""
        try:
            if not request.HasField("command"):
                raise InvalidInput.for_field("command", "is required", reason="MISSING_COMMAND")
            command = decode_command(request.command, self._registry, principal=principal.name)
        except ChronicleError as error:
            if error.reason == UNKNOWN_COMMAND_TYPE and self._replayer is not None:
                return self._recorded_or_refused(request, principal, error, context)
            return self._refuse(request, principal, error, context)
        if request.dry_run:
            batch = CommandBatch((command,), dry_run=True)
            # Queued now where the middleware allows, as a command is: a dry
            # run decides on what the commands before it in a stream left.
            deciding = self._pipeline.start(command, principal, dry_run=True)
            outcome = self._pipeline.submit_batch(batch, principal) if deciding is None else deciding
            return self._dry_runs.audited(outcome, batch, principal, context.peer())
        started = self._pipeline.start(command, principal)
        if started is not None:
            return started
        return self._submitted(command, principal)

    async def _recorded_or_refused(
        self, request: pb.SubmitRequest, principal: Principal, error: ChronicleError, context: Context
    ) -> BatchResult:
        """A command of a type no plugin registers: if its id is recorded
        (it ran under an earlier version, where the type had another name),
        its recorded outcome, as any retry gets; else refused. The caller
        needs the grant to submit the type it sent, as it did then."""
        command = request.command
        name = type_name(command.payload)
        assert self._replayer is not None
        if self._authorizer is None or self._authorizer.may_submit_to(principal, name, command.aggregate_id):
            content = fingerprint_of_unregistered(command.aggregate_id, name, command.payload.value)
            result = await self._replayer.replay_unregistered(command.command_id, command.aggregate_id, name, content)
            if result is not None:
                return BatchResult((result,), result.version, replayed=True)
        return await self._refuse(request, principal, error, context)

    async def _refuse(
        self, request: pb.SubmitRequest, principal: Principal, error: ChronicleError, context: Context
    ) -> BatchResult:
        self._count(request, error)
        await self._refused(SUBMIT_METHOD, request, error, principal, context.peer())
        raise error

    def _count(self, request: pb.SubmitRequest | pb.SubmitBatchRequest, error: ChronicleError) -> None:
        """Count the commands of ``request``, refused before the pipeline."""
        if self._counted is not None:
            for command in refused_commands(request):
                self._counted(type_name(command.payload), command.aggregate_id, error)

    async def _submitted(self, command: CommandRequest, principal: Principal) -> BatchResult:
        result = await self._pipeline.submit(command, principal)
        return BatchResult((result,), result.version, replayed=result.replayed)

    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SubmitResponse:
        principal = current_principal.get()
        if self._rate_limits is not None and self._rate_limits.on:
            try:
                self._rate_limits.take(principal, 1)
            except RateLimited as error:
                await self._refuse(request, principal, error, context)
        try:
            response = _response((await self._start(request, principal, context)).results[0])
        except ChronicleError as error:
            raise self._disclosed(error, principal, request.command) from None
        self._hint(context, request.command.aggregate_id)
        return response

    def _disclosed(
        self, error: ChronicleError, principal: Principal, command: Command, path: str | None = "command"
    ) -> ChronicleError:
        """What the caller may hear of ``error`` (``service.api.disclosure``),
        its fields named as paths in the request, the command's at ``path``
        (``in_request``; None: as they are)."""
        disclosed = self._disclosure.refusal(error, principal, type_name(command.payload))
        return disclosed if path is None else in_request(disclosed, path)

    async def SubmitStream(
        self, requests: AsyncIterator[pb.SubmitRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        principal = current_principal.get()
        await _accepted(context)
        # Started in arrival order, answered in arrival order; at most
        # STREAM_IN_FLIGHT (and stream_bytes) started and unanswered, so a
        # fast sender waits.
        window = _Window(STREAM_IN_FLIGHT, self._stream_bytes)
        reader = self._reader(self._read(requests, _one_each, window, principal, context))
        try:
            while (item := await window.next()) is not None:
                answer = pb.SubmitStreamResponse()
                await self._answer(item, answer, principal)
                yield answer
            await self._ended(reader)
        finally:
            self._readers.discard(reader)
            reader.cancel()
            window.abandon()

    async def SubmitStreamPages(
        self, pages: AsyncIterator[pb.SubmitPage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubmitResultPage]:
        """SubmitStream with the commands of each message started in turn,
        and the answers that are ready together sent as one message."""
        principal = current_principal.get()
        await _accepted(context)
        window = _Window(STREAM_IN_FLIGHT, self._stream_bytes)
        reader = self._reader(self._read(pages, _requests_of, window, principal, context))
        limit = self._page_bytes
        try:
            while (item := await window.next()) is not None:
                page = pb.SubmitResultPage()
                results = page.results
                size = 0
                while True:
                    answer = results.add()
                    await self._answer(item, answer, principal)
                    size += answer.ByteSize()
                    if size > limit and len(results) > 1:
                        # Over the page's bytes: this answer opens the next.
                        moved = results.pop()
                        yield page
                        page = pb.SubmitResultPage()
                        results = page.results
                        results.append(moved)
                        size = moved.ByteSize()
                    if (item := window.next_ready()) is None:
                        break
                yield page
            await self._ended(reader)
        finally:
            self._readers.discard(reader)
            reader.cancel()
            window.abandon()

    def _reader(self, reading: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A stream's reader, as a task ``close`` can stop."""
        if self._closing:
            reading.close()
            raise _shutting_down()
        reader = asyncio.ensure_future(reading)
        self._readers.add(reader)
        return reader

    async def _ended(self, reader: asyncio.Task[None]) -> None:
        """Every command the stream started is answered (the reader closed
        the window as it ended): end the call. Its client's half ended (a
        read error, if any, is raised), or the server stops (``close``
        cancelled the reader)."""
        if reader.cancelled():
            raise _shutting_down()
        await reader

    async def _read(
        self,
        messages: AsyncIterator[Any],
        requests_of: Callable[[Any], Iterable[pb.SubmitRequest]],
        window: _Window,
        principal: Principal,
        context: Context,
    ) -> None:
        """Start each command of the stream's messages, in arrival order."""
        # Per aggregate, the last command that could not be queued at once
        # (middleware whose hooks are coroutines): the next one waits for it.
        waiting: dict[str, asyncio.Future[BatchResult]] = {}
        room_for = self._room_for
        limits = self._rate_limits
        try:
            async for message in messages:
                if limits is not None and limits.on:
                    # Before any of the message's commands starts: the
                    # stream is read no faster than its principal's rate.
                    await limits.wait(principal, _count_of(message), context.time_remaining())
                for request in requests_of(message):
                    if window.full:
                        await window.room()
                    # A full queue on the command's aggregate is waited out,
                    # not refused (AGGREGATE_QUEUE_FULL): a stream reads up
                    # to STREAM_IN_FLIGHT commands ahead, more than a queue
                    # holds, and a refused command's successors for the same
                    # aggregate would run before it. Nothing is awaited from
                    # here to the start, so the room is still there.
                    if room_for is not None:
                        while (room := room_for(request.command.aggregate_id)) is not None:
                            await room
                    # Started now: commands for one aggregate reach its
                    # worker in the order they came.
                    outcome = self._start(request, principal, context)
                    if isinstance(outcome, asyncio.Future):
                        started = outcome  # queued on its worker already (or refused)
                    else:
                        aggregate_id = request.command.aggregate_id
                        started = asyncio.ensure_future(_in_turn(waiting.get(aggregate_id), outcome))
                        waiting[aggregate_id] = started
                        started.add_done_callback(partial(_forget, waiting, aggregate_id))
                    window.put((request.command, started), request.ByteSize())
        finally:
            window.close()

    async def _answer(self, item: Started, answer: pb.SubmitStreamResponse, principal: Principal) -> None:
        """Fill ``answer`` with the outcome of the started command ``item``."""
        command, outcome = item
        answer.command_id = command.command_id
        try:
            _response((await outcome).results[0], answer.ok)
        except ChronicleError as error:
            answer.error.CopyFrom(command_error(self._disclosed(error, principal, command)))
        except Exception:
            log.exception("command %s of a stream failed", command.command_id)
            internal = ChronicleError("internal error", reason="INTERNAL")
            answer.error.CopyFrom(command_error(internal))

    async def ListTypes(
        self, request: pb.ListTypesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListTypesResponse:
        """Each aggregate type the caller may read, or submit one of its
        commands to, with its command, event and state types. The commands
        only reactions send are listed apart (``reaction_command_types``):
        no client may send one, so a grant to submit one shows nothing."""
        principal = current_principal.get()
        authorizer = self._authorizer
        listed: list[pb.AggregateTypeInfo] = []
        for plugin in self._registry.plugins:
            for aggregate in plugin.aggregates:
                commands = sorted(name for name, spec in aggregate.commands.items() if not spec.internal)
                if authorizer is None or (
                    authorizer.may_read(principal, aggregate.name)
                    or any(authorizer.may_submit_somewhere(principal, name) for name in commands)
                ):
                    listed.append(
                        pb.AggregateTypeInfo(
                            name=aggregate.name,
                            plugin=plugin.name,
                            state_type=aggregate.state_type_name,
                            command_types=commands,
                            event_types=sorted(aggregate.events),
                            reaction_command_types=sorted(
                                name for name, spec in aggregate.commands.items() if spec.internal
                            ),
                        )
                    )
        listed.sort(key=lambda info: info.name)
        return pb.ListTypesResponse(aggregate_types=listed)

    async def SubmitBatch(
        self, request: pb.SubmitBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitBatchResponse:
        principal = current_principal.get()
        if self._rate_limits is not None and self._rate_limits.on:
            try:
                self._rate_limits.take(principal, len(request.commands))
            except RateLimited as error:
                self._count(request, error)
                await self._refused(SUBMIT_BATCH_METHOD, request, error, principal, context.peer())
                raise
        try:
            batch = decode_batch(request.commands, self._registry, dry_run=request.dry_run, principal=principal.name)
        except ChronicleError as error:
            try:
                recorded = await self._batch_recorded(request, principal, error)
            except ChronicleError as replayed_error:  # its recorded refusal, or its ids reused
                raise self._batch_disclosed(replayed_error, principal, request) from None
            if recorded is not None:
                self._hint(context, request.commands[0].aggregate_id)
                return _batch_response(recorded)
            self._count(request, error)
            await self._refused(SUBMIT_BATCH_METHOD, request, error, principal, context.peer())
            raise
        try:
            outcome = self._pipeline.submit_batch(batch, principal)
            if batch.dry_run:
                outcome = self._dry_runs.audited(outcome, batch, principal, context.peer())
            result = await outcome
        except ChronicleError as error:
            raise self._batch_disclosed(error, principal, request) from None
        self._hint(context, batch.aggregate_id)
        return _batch_response(result)

    def _batch_disclosed(
        self, error: ChronicleError, principal: Principal, request: pb.SubmitBatchRequest
    ) -> ChronicleError:
        # The pipeline (and a recorded refusal) names the command of a batch that a plugin refused.
        index = error.metadata.get("batch_index")
        path = f"commands[{index}]" if index is not None else None
        return self._disclosed(error, principal, request.commands[0], path)

    async def _batch_recorded(
        self, request: pb.SubmitBatchRequest, principal: Principal, error: ChronicleError
    ) -> BatchResult | None:
        """A batch refused UNKNOWN_COMMAND_TYPE (a type renamed since it
        ran, a rolling plugin upgrade): its recorded outcome if its ids were
        recorded, as ``_recorded_or_refused`` answers a single command; None
        (refused as it is) otherwise: a batch of which no id is recorded, or
        that breaks the batch's rules (one aggregate, each id once). Looked
        up on this refusal's path only: an accepted batch pays nothing. The
        caller needs the grant to submit each type it sent."""
        commands = request.commands
        if (
            error.reason != UNKNOWN_COMMAND_TYPE
            or self._replayer is None
            or not 0 < len(commands) <= MAX_BATCH_COMMANDS
        ):
            return None
        if len({c.aggregate_id for c in commands}) > 1 or len({c.command_id for c in commands}) < len(commands):
            return None
        names = [type_name(c.payload) for c in commands]
        authorizer = self._authorizer
        if authorizer is not None and not all(
            authorizer.may_submit_to(principal, n, c.aggregate_id) for n, c in zip(names, commands, strict=True)
        ):
            return None
        sent = [
            SentCommand(
                c.command_id, c.aggregate_id, name, fingerprint_of_unregistered(c.aggregate_id, name, c.payload.value)
            )
            for c, name in zip(commands, names, strict=True)
        ]
        return await self._replayer.replay_unregistered_batch(sent)


def _batch_response(result: BatchResult) -> pb.SubmitBatchResponse:
    return pb.SubmitBatchResponse(
        results=[_response(r) for r in result.results], version=result.version, replayed=result.replayed
    )


Started = tuple[Command, "asyncio.Future[BatchResult]"]


def in_request(error: ChronicleError, command: str) -> ChronicleError:
    """``error`` with each field it names as a path in the request, for the
    command at ``command`` ("command" in a SubmitRequest, "commands[1]" in
    a batch). A plugin's refusal (a ``ValidationError``, from a handler or
    a middleware ``before`` hook) names fields of the command's payload
    message as the plugin knows them ("amount"): the client gets
    "command.payload.amount", as the server's own refusals name theirs
    ("command.payload.value", "commands[1].aggregate_id"). Anything else is
    returned as it is.

    A copy: a recorded refusal keeps the plugin's names (and is replayed
    through here again), and ErrorInfo's metadata "field" stays the
    plugin's name. Only on the refusal path."""
    if not isinstance(error, ValidationError):
        return error
    violations = getattr(error, "violations", ())  # a withheld refusal has its ``field`` only
    if not violations and not error.field:
        return error
    payload = f"{command}.payload"
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    copy.metadata = dict(error.metadata)
    copy.field = f"{payload}.{error.field}" if error.field else error.field
    copy.violations = tuple(
        FieldViolation(f"{payload}.{v.field}" if v.field else payload, v.description) for v in violations
    )
    return copy


async def _accepted(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Tell a command stream's client at once that the call was accepted
    (its initial metadata, otherwise sent with the first answer): a client
    that must not write before it knows the call is alive waits for this
    (service/client/streaming.py, a status grpc.aio lost)."""
    await context.send_initial_metadata(())


class _Window:
    """The commands of one stream that were started and not yet answered, in
    arrival order: the reader puts, the writer takes; a full window makes
    the reader wait, an empty one the writer. A command the writer took is
    in the window until the writer asks for the next one (its answer built
    by then). Full is ``size`` commands, or ``max_bytes`` of them as they
    arrived (so at most ``max_bytes`` and the command that crossed it: one
    always goes, however large). (An ``asyncio.Queue`` would do the same with
    more machinery per command.)"""

    def __init__(self, size: int, max_bytes: int) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._items: deque[tuple[Started, int]] = deque()
        self._bytes = 0  # of the items and of the one taken
        self._taken: int | None = None  # the bytes of the one taken
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._reader_waits: asyncio.Future[None] | None = None
        self._writer_waits: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        held = len(self._items) if self._taken is None else len(self._items) + 1
        return held >= self._size or self._bytes >= self._max_bytes

    async def room(self) -> None:
        while self.full:
            self._reader_waits = self._loop.create_future()
            await self._reader_waits

    def put(self, item: Started, size: int) -> None:
        self._items.append((item, size))
        self._bytes += size
        _wake(self._writer_waits)

    def close(self) -> None:
        self._closed = True
        _wake(self._writer_waits)

    async def next(self) -> Started | None:
        """The next command (the one taken before is answered)."""
        self._answered()
        while not self._items:
            if self._closed:
                return None
            self._writer_waits = self._loop.create_future()
            await self._writer_waits
        return self._take()

    def next_ready(self) -> Started | None:
        """The next command if its outcome is known now, None otherwise
        (the one taken before is answered)."""
        self._answered()
        if not self._items or not self._items[0][0][1].done():
            return None
        return self._take()

    def _take(self) -> Started:
        item, self._taken = self._items.popleft()
        return item

    def _answered(self) -> None:
        if self._taken is not None:
            self._bytes -= self._taken
            self._taken = None
            _wake(self._reader_waits)

    def abandon(self) -> None:
        """The stream ended early: nobody will hear these answers."""
        while self._items:
            (_, outcome), _ = self._items.popleft()
            outcome.cancel()


async def _in_turn(before: asyncio.Future[BatchResult] | None, outcome: Awaitable[BatchResult]) -> BatchResult:
    """``outcome`` once the stream's command ``before`` it (for the same
    aggregate) is done: its hooks may wait, and must not let it overtake."""
    try:
        if before is not None and not before.done():
            await asyncio.wait((before,))
    except asyncio.CancelledError:
        if inspect.iscoroutine(outcome):
            outcome.close()  # never started: nothing to await
        raise
    return await outcome


def _forget(waiting: dict[str, asyncio.Future[BatchResult]], aggregate_id: str, done: object) -> None:
    if waiting.get(aggregate_id) is done:
        del waiting[aggregate_id]


def _shutting_down() -> StoreUnavailable:
    return StoreUnavailable(
        "the server is shutting down; the commands it did not answer did not run here: send them again, with"
        " their command ids, to any member",
        reason="SHUTTING_DOWN",
    )


def _count_of(message: pb.SubmitRequest | pb.SubmitPage) -> int:
    """The commands of a stream's message: a page's, or one."""
    return len(message.requests) if isinstance(message, pb.SubmitPage) else 1


def _one_each(request: pb.SubmitRequest) -> tuple[pb.SubmitRequest]:
    return (request,)


def _requests_of(page: pb.SubmitPage) -> Iterable[pb.SubmitRequest]:
    return page.requests


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _response(result: CommandResult, response: pb.SubmitResponse | None = None) -> pb.SubmitResponse:
    """``result`` as a SubmitResponse (filled in ``response`` if given: the
    ``ok`` of a stream's answer, built in place)."""
    if response is None:
        response = pb.SubmitResponse()
    response.SetInParent()  # an empty result is still an answer of its own
    response.version = result.version
    if result.replayed:
        response.replayed = True
    add = response.events.add
    for event in result.events:
        encode_event_into(add(), event)
    return response
