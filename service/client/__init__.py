"""A small typed asyncio client for Chronicle.

    from service.client import ChronicleClient, FailedPrecondition

    async with ChronicleClient.connect("127.0.0.1:50051", origin="billing") as client:
        opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        try:
            await client.submit("acc-1", bank.Withdraw(amount=500))
        except FailedPrecondition as refused:
            assert refused.reason == "INSUFFICIENT_FUNDS"
        account = await client.get_aggregate("acc-1", bank.Account)
        then = await client.get_aggregate("acc-1", bank.Account, at_version=1)
        batch = await client.submit_batch(
            [Command("acc-2", bank.OpenAccount(owner="bob")), Command("acc-2", bank.Deposit(amount=5))]
        )
        async for result in client.submit_stream(Command("acc-2", bank.Deposit(amount=n)) for n in range(1, 6)):
            result.result()  # the Submitted, or its RemoteError raised
        async for event in client.read("acc-1"):
            print(event.version, event.payload)
        async for event in client.subscribe(checkpoints=FileCheckpoints(Path("projector.pos"))):
            project(event)  # every event once, in log order; resumes where it stopped
        balance = await client.projections.document(  # a read model, once it holds the opening
            "bank.balances_by_owner", "owner:ann", min_position=opened.position
        )
        status = await client.reactions.get("bank.transfers")  # and client.groups: subscription groups

Commands get a command id (UUID 4) of their own and are retried with it on
UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED, a CANCELLED the client did not ask
for, and RESOURCE_EXHAUSTED with the server's RetryInfo (whose delay is
waited for): the server runs a command id at most once, so a retry never
appends twice. By default (``RetryPolicy()``) a unary call or a read is
retried for 30 seconds, and a subscription, a command stream or a group
consumer is reopened for as long as it is iterated, the backoff growing to
2 seconds: a server restart or a database outage is waited out.
"""

from service.client.checkpoints import CheckpointStore, FileCheckpoints, MemoryCheckpoints, ResumePoint
from service.client.client import ChronicleClient
from service.client.commands import Command
from service.client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ClientClosed,
    ClientUsageError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LogRewound,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RemoteError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    WrongEventLoop,
    retryable,
)
from service.client.groups import Delivery, GroupConsumer, GroupInfo, GroupParkedEvent, Groups
from service.client.projections import Document, FoundDocuments, ParkedEvent, Projections, ProjectionStatus
from service.client.reactions import ParkedCommand, ProcessState, Reactions, ReactionStatus
from service.client.results import AggregateState, Event, StreamResult, Submitted, SubmittedBatch
from service.client.retry import NO_RETRIES, RetryPolicy
from service.client.subscription import LogFilter, Subscription

__all__ = [
    "NO_RETRIES",
    "Aborted",
    "AggregateState",
    "AlreadyExists",
    "Cancelled",
    "CheckpointStore",
    "ChronicleClient",
    "ClientClosed",
    "ClientUsageError",
    "Command",
    "DataLoss",
    "DeadlineExceeded",
    "Delivery",
    "Document",
    "Event",
    "FailedPrecondition",
    "FileCheckpoints",
    "FoundDocuments",
    "GroupConsumer",
    "GroupInfo",
    "GroupParkedEvent",
    "Groups",
    "Internal",
    "InvalidArgument",
    "LogFilter",
    "LogRewound",
    "MemoryCheckpoints",
    "NotFound",
    "OutOfRange",
    "ParkedCommand",
    "ParkedEvent",
    "PermissionDenied",
    "ProcessState",
    "ProjectionStatus",
    "Projections",
    "ReactionStatus",
    "Reactions",
    "RemoteError",
    "ResourceExhausted",
    "ResumePoint",
    "RetryPolicy",
    "StreamResult",
    "Submitted",
    "SubmittedBatch",
    "Subscription",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "WrongEventLoop",
    "retryable",
]
