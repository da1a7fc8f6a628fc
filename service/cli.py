"""The ``chronicle`` command line: serve, and talk to a server.

    chronicle serve [--listen HOST:PORT] [--database-url URL] [--plugin MOD] [--migrate auto|never]
    chronicle migrate [--database-url URL]   # apply pending schema migrations and exit (as the owner)
    chronicle submit ACCOUNT bank.v1.OpenAccount '{"owner": "alice"}' [--dry-run]
    chronicle read ACCOUNT [--from-version N] [--type T] [--origin O] [--limit N] [--backwards]
    chronicle get ACCOUNT [--at-version N | --at-time 2026-01-31T12:00:00Z]
    chronicle projection [NAME [KEY]]        # every projection's progress; one's; or one document
    chronicle projection documents NAME [--prefix P] [--descending]
    chronicle projection rebuild NAME        # from the start, with its progress (admin)
    chronicle projection parked NAME         # events its handler kept failing on
    chronicle projection --orphaned          # also those stored that no loaded plugin declares (admin)
    chronicle projection delete NAME         # delete an undeclared projection's stored rows (admin)
    chronicle reaction NAME reset --to POSITION|start|end   # move its checkpoint (admin; back: handled again)
    chronicle reaction [NAME] [--parked | --replay COMMAND_ID | --dismiss COMMAND_ID | --replay-all | --dismiss-all
                                             | --drop-state STATE_KEY... | --state STATE_KEY
                                             | --states [--prefix P] | --drop-states --prefix P [--confirm N]]
    chronicle group [NAME [--parked | --replay EVENT_ID... | --replay-all | --dismiss EVENT_ID... | --set K=V...]]
    chronicle group create NAME [--aggregate-types T...] [--event-types T...] [--origin O] [--tenant T]
                           [--start-from beginning|end|POSITION] [--segments N] [--max-delivery-attempts N]
                           [--retry-backoff D] [--max-retry-backoff D] [--ack-timeout D] [--max-unanswered-timeouts N]
    chronicle group update NAME [--ack-timeout D ...]   # the settings create takes, but the filter and start
    chronicle group delete NAME --confirm NAME          # without --confirm: what would go; nothing deleted
    chronicle tail [--from end|POSITION [--after-event-id ID]] [--type T] [--aggregate-type A] [--until-caught-up]
    chronicle plugins [--check --database-url URL]   # --check: can they read all the store holds? (read only)
    chronicle new-plugin library
    chronicle health [--server HOST:PORT]    # default: this host's server, as its settings say
    chronicle cluster                        # live members: address, version, schema version, partitions
    chronicle audit [--aggregate ID] [--principal P] [--outcome refused] [--since 2026-01-01T00:00:00Z]
    chronicle apikey PRINCIPAL [--role R] [--tenant T]   # a new API key and its entry for the API-key file
    chronicle forget ACCOUNT                 # crypto-shred an aggregate (admin; irreversible)
    chronicle forget --prefix P [--confirm N]  # every aggregate under P: says how many, then --confirm (admin)
    chronicle aggregates [--prefix P] [--type T]  # list aggregates by id prefix (admin)
    chronicle rewrap-keys                    # after adding a new master key (admin)
    chronicle masterkey ID                   # a new master key line for --master-key-file
    chronicle masterkey --tenant T ID        # one of tenant T's own (docs/security.md, per-tenant keys)
    chronicle export [FILE] [--snapshots] [--commands] [--aggregate ID] [--format binary|jsonl]
    chronicle import FILE [--overwrite] [--restore-deleted] [--derive-per-tenant-claims] [--master-key-file F]
    chronicle convert-eventsourcing FILE --from-url URL --table T --mapping MODULE:FUNCTION
    chronicle delete ACCOUNT [--expected-version N] [--reason TEXT]   # tombstone it (admin)
    chronicle archive FOLDER --type Account [--last-event T] [--untouched-for 365d] [--limit N]
    chronicle restore FILE [--aggregate ID] [--even-if-read-models-behind]  # bring archived aggregates back (admin)
                                             # the store's contents out and in (admin), through the
                                             # server, or with --database-url straight on a store

Against a server with authentication on, pass ``--token`` (or
CHRONICLE_TOKEN), or ``--token-file`` (CHRONICLE_TOKEN_FILE): a file read
again at every call, which an agent or the platform renews (a Kubernetes
projected service-account token, say), so that ``tail`` goes on across
short-lived tokens; against TLS, ``--tls-ca`` (and for mutual TLS
``--tls-cert``/``--tls-key``).

Client commands print JSON on stdout. A refused command prints the gRPC code,
the reason and the message on stderr and exits with status 1 (and, when no
server answered or the server wants a token, a line on what to do); a
mistake on the command line (a payload that is not JSON, a message type the
server does not know) is said the same way, with what to give instead, and
exits with status 2; ``read`` of an
aggregate with no events says NOT_FOUND like ``get``. Every command exits
with the statuses ``EXIT_STATUS_HELP`` lists (``chronicle --help``).
"""

from __future__ import annotations

import os
import sys

# gRPC's core writes log lines of its own to stderr, such as "I… ssl_transport_security.cc] Handshake failed"
# when --tls-ca meets a plaintext server, before the error reaches the command, which then says it again with
# what to do. The core reads GRPC_VERBOSITY once, as grpc is imported (below, before anything else here
# imports it): so the command line (`chronicle`, `python -m service`) runs its commands with it NONE, unless
# the user set it. Not `serve`: a running server's core errors (accept() out of file descriptors, say) are
# for its operator to see; `_serve` finds its commonest start-up failure, an address in use, before gRPC's
# bind would log it. The variable is taken out again once grpc has read it, so that nothing this process
# starts inherits it.
if _GRPC_CORE_QUIETED := (
    "GRPC_VERBOSITY" not in os.environ
    and "grpc" not in sys.modules
    and (
        os.path.basename(sys.argv[0]) in ("chronicle", "chronicle.exe")
        or sys.argv[0] == os.path.join(os.path.dirname(__file__), "__main__.py")
    )
    and sys.argv[1:2] != ["serve"]
):
    os.environ["GRPC_VERBOSITY"] = "NONE"
import argparse
import asyncio
import contextlib
import errno
import ipaddress
import itertools
import json
import logging
import re
import shlex
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import grpc

if _GRPC_CORE_QUIETED:
    del os.environ["GRPC_VERBOSITY"]
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from chronicle.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    command_pb2,
    command_service_pb2,
    command_service_pb2_grpc,
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    projection_service_pb2,
    projection_service_pb2_grpc,
    reaction_service_pb2,
    reaction_service_pb2_grpc,
    subscription_group_service_pb2,
    subscription_group_service_pb2_grpc,
)
from service.api import forgotten
from service.api.codec import check_id, check_stored_id
from service.cli_parser import HintingParser
from service.client.admin import FORGET_DEADLINE
from service.client.retry import REFRESHABLE
from service.errors import ChronicleError, ConfigurationError, InvalidInput
from service.json_input import JsonInputError
from service.progress import Reporter
from service.remote_types import RemoteTypes, UnknownType
from service.settings import add_arguments, env_value, load_settings
from service.version import described as described_version

if TYPE_CHECKING:
    from chronicle.v1 import export_pb2
    from service.plugins.registry import Registry
    from service.transfer.exporter import ExportSelection
    from service.transfer.importer import ImportOptions

DEFAULT_SERVER = "127.0.0.1:50051"


def _event_json(types: RemoteTypes, event: event_pb2.Event) -> dict[str, object]:
    envelope = event_pb2.Event()
    envelope.CopyFrom(event)
    envelope.ClearField("payload")  # its type is only known to ``types``
    data = json_format.MessageToDict(envelope, preserving_proto_field_name=True)
    data["payload"] = None if event.redacted else types.unpack(event.payload)
    return data


def _aggregate_id(text: str) -> str:
    """An aggregate id the server would accept, checked by the server's own
    rule before anything is sent (an all-space id is a typo or an unset
    shell variable, not a name)."""
    try:
        return check_id("aggregate_id", text, reason="INVALID_AGGREGATE_ID")
    except InvalidInput as error:
        raise argparse.ArgumentTypeError(error.violations[0].description) from None


def _stored_aggregate_id(text: str) -> str:
    """An aggregate id to act on what is stored: as ``_aggregate_id``, but
    with control characters let through (a store may hold such ids)."""
    try:
        return check_stored_id("aggregate_id", text, reason="INVALID_AGGREGATE_ID")
    except InvalidInput as error:
        raise argparse.ArgumentTypeError(error.violations[0].description) from None


def _count(text: str) -> int:
    """A whole number, 0 or more (a version, a limit): a negative one is
    refused here, named, rather than by Protobuf's "Value out of range"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    """A whole number, 1 or more (a limit)."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    """A number of seconds above 0: a deadline of 0 or less would fail every
    call at once, as DEADLINE_EXCEEDED, as if the server were slow."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _read_models_wait_option(parser: argparse.ArgumentParser) -> None:
    from service.transfer.read_models import DEFAULT_READ_MODELS_WAIT, MAX_READ_MODELS_WAIT

    def wait(text: str) -> float:
        value = _seconds(text)
        if value > MAX_READ_MODELS_WAIT:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_READ_MODELS_WAIT:g} seconds, got {text}")
        return value

    parser.add_argument(
        "--read-models-wait",
        type=wait,
        default=DEFAULT_READ_MODELS_WAIT,
        metavar="SECONDS",
        help="restoring: how long to wait for projections below a tombstone to pass it before refusing"
        f" (READ_MODELS_BEHIND; default {DEFAULT_READ_MODELS_WAIT:g}, at most {MAX_READ_MODELS_WAIT:g})",
    )


_GROUP_DURATIONS = ("retry_backoff", "max_retry_backoff", "ack_timeout")
_GROUP_COUNTS = ("max_delivery_attempts", "max_unanswered_timeouts", "segments")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}


def _milliseconds(text: str) -> int:
    """A duration (``500ms``, ``30s``, ``2m``, ``1h``; a bare number is
    seconds) as milliseconds."""
    matched = _DURATION.fullmatch(text.strip())
    if matched is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 500ms, 30s, 2m or 1h, got {text!r}")
    return round(float(matched.group(1)) * _UNIT_MS[matched.group(2)])


def _group_setting(text: str) -> tuple[str, int]:
    """``--set KEY=VALUE`` of ``chronicle group``: a count, or a duration
    as milliseconds. The filter is no setting here: UpdateGroup has no field
    for it (what was settled under the old filter is not read again)."""
    key, value = _key_value(text)
    if key in _GROUP_COUNTS:
        return key, _count(value)
    if key in _GROUP_DURATIONS:
        try:
            return key, _milliseconds(value)
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"{key}: {error}") from None
    known = ", ".join(_GROUP_COUNTS[:2] + _GROUP_DURATIONS)
    raise argparse.ArgumentTypeError(f"{key!r} is no setting an update changes; these are: {known}")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _rfc3339(text: str) -> str:
    """A time the server's ``Timestamp`` takes, checked before anything is sent."""
    from google.protobuf import timestamp_pb2

    try:
        timestamp_pb2.Timestamp().FromJsonString(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time with its offset, e.g. 2026-01-31T12:00:00Z, got {text!r}"
        ) from None
    return text


# URL schemes that people write before an address, which gRPC would take for
# a host name ("errors resolving http://…"). gRPC's own target schemes
# (dns:///, unix:, ipv4:, …) pass.
_URL_SCHEMES = ("http://", "https://", "grpc://", "grpcs://")


def _server_address(text: str) -> str:
    """``--server`` (or CHRONICLE_SERVER): host:port, refused as a URL or with a path."""
    if text.lower().startswith(_URL_SCHEMES):
        address = text.partition("://")[2].rstrip("/")
        raise argparse.ArgumentTypeError(
            f"give the server as host:port, without a scheme: {address!r}, not {text!r} (TLS is --tls-ca, not https://)"
        )
    if text.endswith("/") and not text.startswith("unix"):
        raise argparse.ArgumentTypeError(f"give the server as host:port, without a path: {text.rstrip('/')!r}")
    return text


class _UsageError(ValueError):
    """A mistake on the command line, said in one line, then what to do
    about it on the lines of ``hint``."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _print(data: object) -> None:
    print(json.dumps(data, ensure_ascii=False), flush=True)


# Exit statuses, the same for every command (and listed in --help).
EXIT_OK = 0
EXIT_REFUSED = 1  # the server refused or failed the call, or could not be reached; health: not serving
EXIT_USAGE = 2  # the command line, a setting or the input is wrong: nothing was sent
EXIT_INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C, as a shell reports it
EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE  # the reader of the output left (`| head`), as for `yes | head`

EXIT_STATUS_HELP = f"""exit status (every command):
  {EXIT_OK}    done
  {EXIT_REFUSED}    the server refused or failed the call (the gRPC code, reason and
       message on stderr, e.g. "error: NOT_FOUND AGGREGATE_NOT_FOUND: ..."),
       or could not be reached (with --database-url: the store refused, e.g.
       an import's AGGREGATE_NOT_EMPTY); a file failed midway (ENOSPC: a
       full disk); health: the server is not serving; plugins --check: the
       store holds something the plugins cannot read (the JSON report says what);
       projection NAME: it is failing (its status printed, the error on stderr)
  {EXIT_USAGE}    the command line, a setting or the input is wrong (bad arguments, a
       payload that is not a JSON object, a type the server does not know,
       a file that cannot be read or written, FILE_NOT_READABLE and
       FILE_NOT_WRITABLE): nothing was sent
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_STDOUT_CLOSED}  the reader of the output stopped early (`chronicle read ... | head`)
"""


def _report(code: str, reason: str, details: str, metadata: dict[str, str]) -> int:
    """A refusal on stderr, one line (and its metadata on a second)."""
    line = f"error: {code}"
    if reason:
        line += f" {reason}"
    print(f"{line}: {details}", file=sys.stderr)
    if metadata:
        print(f"  {json.dumps(metadata, sort_keys=True)}", file=sys.stderr)
    return EXIT_REFUSED


def _error_info(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata of a failed call ("" and {} if none)."""
    status = rpc_status.from_call(error)  # grpc raises the call itself
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


def _report_rpc_error(error: grpc.RpcError, args: argparse.Namespace | None = None) -> int:
    call = error  # grpc raises the call itself
    reason, metadata = _error_info(error)
    code = call.code().name if hasattr(call, "code") else "UNKNOWN"
    details = call.details() if hasattr(call, "details") else str(error)
    status = _report(code, reason, details, metadata)
    if code == "UNAVAILABLE" and not reason and args is not None:
        # The server's own UNAVAILABLE carries a reason: without one, no
        # server answered (not running, another port, TLS on one side only).
        print(_unreachable_hint(details or "", args), file=sys.stderr)
    elif reason == "NO_CREDENTIALS":
        print(
            "  this server has authentication on: give a token with --token TOKEN (env CHRONICLE_TOKEN)"
            " or --token-file FILE (env CHRONICLE_TOKEN_FILE)",
            file=sys.stderr,
        )
    return status


def _unreachable_hint(details: str, args: argparse.Namespace) -> str:
    server: str | None = getattr(args, "server", None)
    where = f"at {server}" if server else "where this host's settings say (CHRONICLE_LISTEN)"
    tls = bool(getattr(args, "tls_ca", None) or getattr(args, "tls_cert", None))
    if server and ":" not in server.rpartition("]")[2]:
        return f"  --server {server} names no port (gRPC then tries 443): give host:port, e.g. {server}:50051"
    if "errors resolving" in details.lower():
        return f"  the host of {server or 'the address'} is not known here: check its spelling (--server HOST:PORT)"
    if "handshake" in details.lower() and tls:
        return (
            f"  the TLS handshake failed {where}: a server without TLS needs no --tls-ca;"
            " one with it, the CA that signed its certificate"
        )
    if "socket closed" in details.lower() and not tls:
        return (
            f"  the connection {where} closed at once: is it a Chronicle server? One with TLS (--tls-cert-file)"
            " needs --tls-ca CA_FILE (env CHRONICLE_TLS_CA)"
        )
    if "socket closed" in details.lower():
        # The client trusted the server's certificate (a failed check is a
        # handshake error on this side); the server then closed the
        # connection: it wants a client certificate that its CA signed.
        if getattr(args, "tls_cert", None):
            return (
                f"  the server {where} closed the connection during TLS: it did not accept --tls-cert;"
                " it takes certificates signed by the CA of its --tls-client-ca-file"
            )
        return (
            f"  the server {where} closed the connection during TLS: it asks for a client certificate"
            " (mutual TLS): give --tls-cert CERT_FILE --tls-key KEY_FILE (env CHRONICLE_TLS_CERT, CHRONICLE_TLS_KEY)"
        )
    return (
        f"  no Chronicle server answered {where}: start one (`make run` in the repository, or `chronicle serve`),"
        " or give its address with --server HOST:PORT (env CHRONICLE_SERVER)"
    )


def _submit(args: argparse.Namespace, channel: grpc.Channel) -> int:
    types = RemoteTypes(channel)
    try:
        message = types.from_json(args.type, args.payload)
    except UnknownType as error:
        raise _UsageError(
            str(error),
            "  give the command message's full name, its package included (bank.v1.Deposit, not Deposit);"
            " the server lists its command types when it starts, and `chronicle plugins` those of the plugins"
            " this host would load",
        ) from None
    except JsonInputError as error:
        if "is not valid JSON" not in str(error):
            raise
        raise _UsageError(
            str(error),
            "  the payload is one JSON object, its keys and strings in double quotes, all of it in single quotes"
            """ for the shell: '{"amount": 100}'""",
        ) from None
    payload = any_pb2.Any()
    payload.Pack(message)
    command = command_pb2.Command(
        command_id=args.command_id or str(uuid.uuid4()),
        aggregate_id=args.aggregate_id,
        payload=payload,
        user_id=args.user or "",
        origin=args.origin or "cli",
        metadata=dict(args.meta or ()),
    )
    command.timestamp.GetCurrentTime()
    if args.expected_version is not None:
        command.expected_version = args.expected_version
    stub = command_service_pb2_grpc.CommandServiceStub(channel)
    request = command_service_pb2.SubmitRequest(command=command, dry_run=args.dry_run)
    try:
        response = stub.Submit(request, timeout=args.timeout)
    except grpc.RpcError as error:
        status = _report_rpc_error(error, args)
        if error.code() in _OUTCOME_UNKNOWN and not args.dry_run:
            # The server may have run it: the same id again runs it at most
            # once and answers what it did, so the id is what to keep.
            print(
                f"  the command may have run: send it again with --command-id {command.command_id} to run it at"
                " most once and learn its outcome",
                file=sys.stderr,
            )
        return status
    _print(
        {
            "command_id": command.command_id,
            "version": response.version,
            "replayed": response.replayed,
            "dry_run": args.dry_run,
            "events": [_event_json(types, e) for e in response.events],
        }
    )
    return EXIT_OK


# Codes after which a submitted command may or may not have run.
_OUTCOME_UNKNOWN = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


def _read(args: argparse.Namespace, channel: grpc.Channel) -> int:
    types = RemoteTypes(channel)
    for event_type in args.type or ():
        # ReadAggregate takes any name and matches nothing with a wrong one:
        # a typo would print nothing and look like "no such events".
        try:
            types.message_class(event_type)
        except UnknownType as error:
            raise _UsageError(
                f"--type {event_type}: {error}",
                "  give the event message's full name, its package included (bank.v1.MoneyDeposited)",
            ) from None
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    request = event_service_pb2.ReadAggregateRequest(
        aggregate_id=args.aggregate_id,
        from_version=args.from_version if args.from_version is not None else (0 if args.backwards else 1),
        origin=args.origin or "",
        event_types=args.type or (),
        limit=args.limit,
        backwards=args.backwards,
    )
    printed = 0
    for event in stub.ReadAggregate(request, timeout=args.timeout):
        _print(_event_json(types, event))
        printed += 1
    if printed == 0 and not _exists(stub, args.aggregate_id, timeout=args.timeout):
        # The RPC streams nothing for an aggregate with no events (an empty
        # page is not an error); a person asking for one gets what `get` says.
        return _report(
            "NOT_FOUND",
            "AGGREGATE_NOT_FOUND",
            f"aggregate {args.aggregate_id!r} has no events",
            {"aggregate_id": args.aggregate_id},
        )
    return EXIT_OK


def _exists(stub: event_service_pb2_grpc.EventServiceStub, aggregate_id: str, *, timeout: float) -> bool:
    """Whether the aggregate has any event at all (a filtered read that
    printed nothing may still be of an aggregate that exists)."""
    first = event_service_pb2.ReadAggregateRequest(aggregate_id=aggregate_id, limit=1)
    return any(True for _ in stub.ReadAggregate(first, timeout=timeout))


# The first word of ``chronicle projection`` that names an action on the
# projection named next, rather than a projection.
_PROJECTION_ACTIONS = ("documents", "parked", "rebuild", "delete")
# How often ``projection rebuild`` asks how far the projection has got.
_REBUILD_POLL_SECONDS = 0.2
# What ``projection rebuild`` allows each try of a projection that parks to
# take (reading and applying its batch), beyond the wait between tries.
_REBUILD_TRY_SECONDS = 10.0
# A projection's wait between tries when the server does not say
# (``retry_seconds``' default in ``service.plugins``).
_DEFAULT_RETRY = 5.0


def _projection(args: argparse.Namespace, channel: grpc.Channel) -> int:
    stub = projection_service_pb2_grpc.ProjectionServiceStub(channel)
    words = args.words
    if len(words) > 2:
        raise ValueError("chronicle projection takes NAME [KEY], or documents|parked|rebuild|delete NAME")
    if not words:  # every projection the caller may read, as `chronicle reaction` and `group` list theirs
        listed = stub.ListProjections(
            projection_service_pb2.ListProjectionsRequest(include_orphaned=args.orphaned), timeout=args.timeout
        )
        for status in listed.projections:
            _print(_as_dict(status))
        for orphan in listed.orphaned:  # marked so: a script tells them from the loaded ones
            _print({"name": orphan.name, "position": orphan.position, "orphaned": True})
        return EXIT_OK
    if args.skip is not None:
        if len(words) != 1:
            raise ValueError("chronicle projection NAME --skip POSITION takes one projection's NAME")
        skipped = stub.SkipEvent(
            projection_service_pb2.SkipEventRequest(projection=words[0], position=args.skip), timeout=args.timeout
        )
        _print({"projection": words[0], "skipped": args.skip, "parked": _as_dict(skipped.parked)})
        return EXIT_OK
    if len(words) == 2 and words[0] in _PROJECTION_ACTIONS:
        action, name = words
        if action == "rebuild":
            return _rebuild(stub, name, args)
        if action == "delete":
            gone = stub.DeleteProjection(
                projection_service_pb2.DeleteProjectionRequest(name=name), timeout=args.timeout
            )
            _print({"projection": name, "deleted": gone.deleted})
            return EXIT_OK
        if action == "parked":
            return _parked(stub, name, args)
        return _documents(stub, name, args, RemoteTypes(channel))
    if len(words) == 1:
        status = stub.GetProjection(projection_service_pb2.GetProjectionRequest(name=words[0]), timeout=args.timeout)
        _print(
            json_format.MessageToDict(
                status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )
        if status.error:
            # A script or a health check learns it from the status too, not only from the JSON.
            print(f"error: projection {status.name} is failing: {status.error}", file=sys.stderr)
            return EXIT_REFUSED
        return EXIT_OK
    name, key = words
    types = RemoteTypes(channel)
    found = stub.GetDocument(projection_service_pb2.GetDocumentRequest(projection=name, key=key), timeout=args.timeout)
    _print({"projection": name, "key": key, "position": found.position, "document": types.unpack(found.document)})
    return EXIT_OK


def _documents(
    stub: projection_service_pb2_grpc.ProjectionServiceStub, name: str, args: argparse.Namespace, types: RemoteTypes
) -> int:
    order = (
        projection_service_pb2.DOCUMENT_ORDER_KEY_DESCENDING
        if args.descending
        else projection_service_pb2.DOCUMENT_ORDER_KEY_ASCENDING
    )
    token = ""
    while True:
        page = stub.ListDocuments(
            projection_service_pb2.ListDocumentsRequest(
                projection=name, key_prefix=args.prefix, page_token=token, order=order, page_size=1000
            ),
            timeout=args.timeout,
        )
        for document in page.documents:
            _print({"key": document.key, "position": page.position, "document": types.unpack(document.document)})
        token = page.next_page_token
        if not token:
            return EXIT_OK


def _parked(stub: projection_service_pb2_grpc.ProjectionServiceStub, name: str, args: argparse.Namespace) -> int:
    token = ""
    while True:
        page = stub.ListParkedEvents(
            projection_service_pb2.ListParkedEventsRequest(projection=name, page_token=token, page_size=1000),
            timeout=args.timeout,
        )
        for event in page.events:
            _print(json_format.MessageToDict(event, preserving_proto_field_name=True))
        token = page.next_page_token
        if not token:
            return EXIT_OK


def _rebuild(stub: projection_service_pb2_grpc.ProjectionServiceStub, name: str, args: argparse.Namespace) -> int:
    """Clear the projection and follow it applying the log again: its
    position against the log's head, until it reaches the head as of the
    rebuild. A projection that stops on an error ends the wait (the server
    goes on trying): one that stops (``on_failure="stop"``) as soon as it
    reports one; one that parks an event its handler keeps failing on is
    waited for while it tries again, and only once the same error has held
    it at one position for longer than its tries would take to park the
    event (a failure that parking does not get past: a store that keeps
    failing) is it stopped."""
    started = stub.RebuildProjection(projection_service_pb2.RebuildProjectionRequest(name=name), timeout=args.timeout)
    if args.no_wait:
        _print({"projection": name, "rebuilding": True, "log_head": started.log_head})
        return EXIT_OK
    reporter = Reporter(f"rebuilding {name}", unit="positions")
    failing: tuple[int, str] | None = None  # (position, error) the projection has been failing at
    failing_since = 0.0
    said_where = False
    while True:
        status = stub.GetProjection(projection_service_pb2.GetProjectionRequest(name=name), timeout=args.timeout)
        if not said_where:
            _say_where_it_runs(name, status, args.server)
            said_where = True
        reporter.update(status.position, status.log_head)
        if status.position >= started.log_head:
            break
        if not status.error:
            failing = None
        elif failing != (status.position, status.error):
            failing, failing_since = (status.position, status.error), time.monotonic()
        if failing is not None and time.monotonic() - failing_since >= _parking_takes(status):
            reporter.close(f"stopped at position {status.position}: {status.error}")
            print(
                f"error: projection {name} stopped at position {status.position}: {status.error}"
                f" (the server retries it; follow it with `chronicle projection {name}`)",
                file=sys.stderr,
            )
            return EXIT_REFUSED
        time.sleep(_REBUILD_POLL_SECONDS)
    reporter.close(f"rebuilt up to position {status.position}")
    _print(
        {
            "projection": name,
            "position": status.position,
            "log_head": status.log_head,
            "parked_events": status.parked_events,
        }
    )
    return EXIT_OK


def _say_where_it_runs(name: str, status: projection_service_pb2.GetProjectionResponse, server: str | None) -> None:
    """On stderr, when the server asked does not run the projection: the
    rebuild goes on where it runs (the reset is in the store), but only that
    replica knows its errors (except a stop at an event, which it stores), so
    another failure there looks here like a rebuild that does not move."""
    if status.running:
        return
    asked = server or "the server asked"
    if status.runner:
        print(
            f"note: projection {name} runs on {status.runner}, not on {asked}: it is rebuilt there, and its errors"
            f" are reported there only, but for a stop at an event (follow them with `chronicle projection {name}"
            f" --server {status.runner}`)",
            file=sys.stderr,
        )
        return
    print(
        f"note: no replica runs projection {name} now, as {asked} last heard: it is rebuilt once one takes it",
        file=sys.stderr,
    )


def _parking_takes(status: projection_service_pb2.GetProjectionResponse) -> float:
    """How long an error may last before ``projection rebuild`` stops
    waiting: 0 for a projection that stops on one; for one that parks, its
    ``max_attempts`` tries ``retry_interval`` apart (the plugins' default
    from a server that does not say), and what the tries themselves take."""
    if status.on_failure != "park":
        return 0.0
    retry = status.retry_interval.ToNanoseconds() / 1e9 if status.HasField("retry_interval") else _DEFAULT_RETRY
    return max(status.max_attempts, 1) * (retry + _REBUILD_TRY_SECONDS)


def _reset_to(text: str) -> int | str:
    """``--to``: a log position, ``start`` or ``end``."""
    if text in ("start", "end"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is no log position: give a number, start or end")
    return int(text)


def _reset_reaction(args: argparse.Namespace, stub: reaction_service_pb2_grpc.ReactionServiceStub) -> int:
    """``chronicle reaction NAME reset --to POSITION|start|end``."""
    acting = (args.replay, args.dismiss, args.drop_state, args.state)
    flags = (args.parked, args.replay_all, args.dismiss_all, args.states, args.drop_states)
    if (
        args.name is None
        or args.verb != "reset"
        or args.to is None
        or any(given is not None for given in acting)
        or any(flags)
    ):
        raise _UsageError(
            "reset moves one reaction's checkpoint, and nothing else in the same call",
            "chronicle reaction NAME reset --to POSITION|start|end",
        )
    request = reaction_service_pb2.ResetReactionRequest(
        name=args.name, even_if_records_pruned=args.even_if_records_pruned
    )
    if args.to == "end":
        request.to_end = True
    elif args.to != "start":
        request.position = args.to
    reset = stub.ResetReaction(request, timeout=args.timeout)
    _print(
        {
            "reaction": args.name,
            "previous_position": reset.previous_position,
            "position": reset.position,
            "log_head": reset.log_head,
        }
    )
    return EXIT_OK


def _reaction(args: argparse.Namespace, channel: grpc.Channel) -> int:
    stub = reaction_service_pb2_grpc.ReactionServiceStub(channel)
    if args.name is None and (
        args.parked
        or args.replay is not None
        or args.dismiss is not None
        or args.replay_all
        or args.dismiss_all
        or args.drop_state
        or args.state is not None
        or args.states
        or args.drop_states
    ):
        raise _UsageError(
            "--parked, --replay, --dismiss, --replay-all, --dismiss-all and the --state options act on one reaction",
            "name it: chronicle reaction NAME --parked (or --replay COMMAND_ID, --replay-all, --state KEY, ...)",
        )
    if args.verb == "reset" or args.to is not None or args.even_if_records_pruned:
        return _reset_reaction(args, stub)
    if args.reason and not (args.replay_all or args.dismiss_all):
        raise _UsageError("--reason goes with --replay-all or --dismiss-all", "add one of them, or leave --reason out")
    if args.prefix is not None and not (args.states or args.drop_states):
        raise _UsageError("--prefix goes with --states or --drop-states", "add one of them, or leave --prefix out")
    if args.confirm is not None and not args.drop_states:
        raise _UsageError("--confirm goes with --drop-states", "add it, or leave --confirm out")
    if args.drop_states and args.prefix is None:
        raise _UsageError(
            "--drop-states needs --prefix (the states whose key starts with it)",
            "add --prefix P (--prefix '' for every state of the reaction)",
        )
    # An empty key or id is sent, for the server to refuse with its reason
    # (INVALID_STATE_KEY, INVALID_COMMAND_ID): taken as absent, it printed the
    # reaction's status and exited 0, and a script's empty "$ID" did nothing.
    if args.state is not None or args.states or args.drop_states:
        return _process_states(args, stub, channel)
    if args.name is None:
        listed = stub.ListReactions(reaction_service_pb2.ListReactionsRequest(), timeout=args.timeout)
        for status in listed.reactions:
            _print(_as_dict(status))
        return EXIT_OK
    if args.replay is not None:
        replay = reaction_service_pb2.ReplayParkedCommandRequest(reaction=args.name, command_id=args.replay)
        replayed = stub.ReplayParkedCommand(replay, timeout=args.timeout)
        _print(_as_dict(replayed))
        if replayed.accepted:
            return EXIT_OK
        # Sent again and refused again: still parked. A refusal like any
        # other, though the call itself was answered (no gRPC code to say).
        print(
            f"error: {replayed.reason or 'REFUSED'}: parked command {args.replay} was refused again"
            f" and stays parked: {replayed.message}",
            file=sys.stderr,
        )
        where = {"reaction": args.name, "command_id": args.replay, "replayed_as": replayed.command_id}
        print(f"  {json.dumps(where, sort_keys=True)}", file=sys.stderr)
        return EXIT_REFUSED
    if args.dismiss is not None:
        dismiss = reaction_service_pb2.DismissParkedCommandRequest(reaction=args.name, command_id=args.dismiss)
        stub.DismissParkedCommand(dismiss, timeout=args.timeout)
        _print({"reaction": args.name, "dismissed": args.dismiss})
        return EXIT_OK
    if args.drop_state:
        drop = _drop_request(args.name, args.drop_state)
        _dropped(stub.DropProcessState(drop, timeout=args.timeout), args.drop_state)
        if len(args.drop_state) == 1:  # as before several keys could be named
            _print({"reaction": args.name, "dropped_state": args.drop_state[0]})
        else:
            _print({"reaction": args.name, "dropped_states": args.drop_state, "dropped": len(args.drop_state)})
        return EXIT_OK
    if args.replay_all:
        request = reaction_service_pb2.ReplayAllParkedCommandsRequest(reaction=args.name, reason=args.reason)
        replayed_all = stub.ReplayAllParkedCommands(request, timeout=args.timeout)
        _print({"reaction": args.name, "accepted": replayed_all.accepted, "refused": replayed_all.refused})
        return EXIT_OK
    if args.dismiss_all:
        request_all = reaction_service_pb2.DismissAllParkedCommandsRequest(reaction=args.name, reason=args.reason)
        dismissed_all = stub.DismissAllParkedCommands(request_all, timeout=args.timeout)
        _print({"reaction": args.name, "dismissed": dismissed_all.dismissed})
        return EXIT_OK
    if args.parked:
        types = RemoteTypes(channel)
        token = ""
        while True:  # a page at a time: parked commands may carry large metadata
            page = stub.ListParkedCommands(
                reaction_service_pb2.ListParkedCommandsRequest(reaction=args.name, page_token=token),
                timeout=args.timeout,
            )
            for parked in page.commands:
                _print(_parked_command_json(types, parked))
            token = page.next_page_token
            if not token:
                return EXIT_OK
    status = stub.GetReaction(reaction_service_pb2.GetReactionRequest(name=args.name), timeout=args.timeout)
    _print(_as_dict(status))
    return EXIT_OK


def _process_states(
    args: argparse.Namespace, stub: reaction_service_pb2_grpc.ReactionServiceStub, channel: grpc.Channel
) -> int:
    """``chronicle reaction NAME --state KEY``, ``--states [--prefix P]``,
    ``--drop-states --prefix P [--confirm COUNT]``."""
    types = RemoteTypes(channel)
    if args.state is not None:
        request = reaction_service_pb2.GetProcessStateRequest(reaction=args.name, state_key=args.state)
        found = stub.GetProcessState(request, timeout=args.timeout)
        _print({"reaction": args.name, "position": found.position, **_process_state_json(types, found.state)})
        return EXIT_OK
    keys: list[str] = []
    token = ""
    while True:  # a page at a time: states may be large
        listing = reaction_service_pb2.ListProcessStatesRequest(
            reaction=args.name, key_prefix=args.prefix or "", page_token=token
        )
        page = stub.ListProcessStates(listing, timeout=args.timeout)
        for state in page.states:
            if args.drop_states:
                keys.append(state.state_key)
            else:
                _print({"reaction": args.name, **_process_state_json(types, state)})
        token = page.next_page_token
        if not token:
            break
    if not args.drop_states:
        return EXIT_OK
    if args.confirm != len(keys):
        # Nothing is dropped until the operator has seen how many match,
        # and only if that many still do.
        asked = "" if args.confirm is None else f" (--confirm said {args.confirm})"
        raise _UsageError(
            f"{len(keys)} states of reaction {args.name} have a key starting with {args.prefix!r}{asked}:"
            " nothing was dropped",
            f"to drop them: chronicle reaction {args.name} --drop-states --prefix {shlex.quote(args.prefix)}"
            f" --confirm {len(keys)}",
        )
    dropped = 0
    for start in range(0, len(keys), _DROP_STEP):  # each step all or none
        step = keys[start : start + _DROP_STEP]
        drop = _drop_request(args.name, step)
        dropped += _dropped(stub.DropProcessState(drop, timeout=args.timeout), step)
    _print({"reaction": args.name, "prefix": args.prefix, "dropped": dropped})
    return EXIT_OK


def _drop_request(reaction: str, keys: Sequence[str]) -> reaction_service_pb2.DropProcessStateRequest:
    # The first key in state_key: a server older than state_keys drops one key as before.
    return reaction_service_pb2.DropProcessStateRequest(reaction=reaction, state_key=keys[0], state_keys=keys[1:])


def _dropped(response: reaction_service_pb2.DropProcessStateResponse, keys: Sequence[str]) -> int:
    """How many of ``keys`` the server said it dropped: all, or it is a
    server older than ``state_keys``, which dropped the first alone (and
    says 0)."""
    if len(keys) > 1 and response.dropped != len(keys):
        raise _UsageError(
            f"the server dropped only the state {keys[0]!r} of the {len(keys)} named: it is older than"
            " DropProcessState's state_keys",
            "drop the others one key per call, or upgrade the server",
        )
    return len(keys)


# States one DropProcessState drops (its limit), in one transaction.
_DROP_STEP = 1000


def _process_state_json(types: RemoteTypes, state: reaction_service_pb2.StoredProcessState) -> dict[str, object]:
    """A process state as JSON: as the server rendered it with its plugins'
    types, else unpacked with the types it serves (or its bytes in hex)."""
    shown: object = json.loads(state.state_json) if state.state_json else types.unpack(state.state)
    shown_state: dict[str, object] = {
        "state_key": state.state_key,
        "state_type": state.state_type,
        "state": shown,
        "subjects": list(state.subjects),
        # Pending deadlines, soonest first (none: an empty list).
        "deadlines": [{"name": d.name, "due": d.due.ToJsonString()} for d in state.deadlines],
    }
    # When the process began and last changed (commit times; absent for a
    # state an older server wrote, or from an older server).
    if state.HasField("started"):
        shown_state["started"] = state.started.ToJsonString()
    if state.HasField("updated"):
        shown_state["updated"] = state.updated.ToJsonString()
    return shown_state


def _group(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """``chronicle group``: the groups (or one) with their state; one's
    parked events; replaying or dismissing them (admin)."""
    stub = subscription_group_service_pb2_grpc.SubscriptionGroupServiceStub(channel)
    if args.name is None:
        if args.parked or args.replay or args.replay_all or args.dismiss or args.set:
            raise _UsageError(
                "--parked, --replay, --replay-all, --dismiss and --set act on one group",
                "name it: chronicle group NAME --parked (or --replay EVENT_ID..., --replay-all, --dismiss EVENT_ID...)",
            )
        for info in stub.ListGroups(subscription_group_service_pb2.ListGroupsRequest(), timeout=args.timeout).groups:
            _print(_as_dict(info))
        return EXIT_OK
    if args.set:
        update = subscription_group_service_pb2.UpdateGroupRequest(name=args.name)
        for key, value in args.set:
            if key in _GROUP_DURATIONS:
                getattr(update, key).FromMilliseconds(value)
            else:
                setattr(update, key, value)
        updated = stub.UpdateGroup(update, timeout=args.timeout)
        _print(_as_dict(updated.group))
        return EXIT_OK
    if args.replay or args.replay_all:
        request = subscription_group_service_pb2.ReplayParkedRequest(group=args.name, event_ids=args.replay or [])
        replayed = stub.ReplayParked(request, timeout=args.timeout)
        _print({"group": args.name, "replaying": replayed.replaying})
        return EXIT_OK
    if args.dismiss:
        dismiss = subscription_group_service_pb2.DismissParkedRequest(group=args.name, event_ids=args.dismiss)
        dismissed = stub.DismissParked(dismiss, timeout=args.timeout)
        _print({"group": args.name, "dismissed": dismissed.dismissed})
        return EXIT_OK
    if args.parked:
        # By the server's page token: paging by position would pass over the
        # rest of a split event's pieces, which share its position. A server
        # from before page tokens sends none: a full page is then followed
        # by position, and a shorter one is the last.
        after, token = 0, ""
        while True:
            listing = subscription_group_service_pb2.ListParkedRequest(
                group=args.name, after_position=after, limit=1000, page_token=token
            )
            response = stub.ListParked(listing, timeout=args.timeout)
            for parked in response.parked:
                _print(_parked_group_event(parked))
            token = response.next_page_token
            if not token:
                if len(response.parked) < 1000:
                    return EXIT_OK
                after = response.parked[-1].position
    listed = stub.ListGroups(subscription_group_service_pb2.ListGroupsRequest(), timeout=args.timeout).groups
    for info in listed:
        if info.name == args.name:
            _print(_as_dict(info))
            return EXIT_OK
    # ListGroups shows the groups the caller may consume: a group it may not
    # is as absent to it as one that does not exist (the RPCs say so alike).
    # Said as the server says a refusal.
    return _report(
        "NOT_FOUND",
        "GROUP_NOT_FOUND",
        f"subscription group {args.name!r} does not exist, or this caller may not consume it",
        {"group": args.name},
    )


# ``chronicle group create|update|delete NAME``: the word after ``group`` is
# taken as the verb before argparse reads the line, since the ``group``
# command's own first word is a group's name (``chronicle group billing``).
# A group named "create", "update" or "delete" is still listed by
# ``chronicle group``, updated and deleted by the verbs (``chronicle group
# update create --ack-timeout 1s``); its parked events are the console's.
_GROUP_VERBS = ("create", "update", "delete")


def _with_group_verb(argv: Sequence[str]) -> list[str]:
    if len(argv) >= 2 and argv[0] == "group" and argv[1] in _GROUP_VERBS:
        return [f"group {argv[1]}", *argv[2:]]
    return list(argv)


def _at_least_one(text: str) -> int:
    """A count whose 0 the RPC would take as "the default": refused here,
    so that ``--segments 0`` is not silently 16."""
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more (leave the option out for the default)")
    return value


def _start(text: str) -> tuple[int, bool]:
    """``--start-from``: ``0``/``beginning``, ``end``, or a position to start
    after (as ``tail --from``): the request's ``(after_position, from_end)``."""
    if text in ("beginning", "0"):
        return 0, False
    if text == "end":
        return 0, True
    try:
        return _count(text), False
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'beginning', 'end' or a position, got {text!r}") from None


def _set_group_settings(
    request: subscription_group_service_pb2.CreateGroupRequest | subscription_group_service_pb2.UpdateGroupRequest,
    args: argparse.Namespace,
) -> None:
    """The settings given on the line into a CreateGroup or UpdateGroup
    request; those left out stay unset (the default, or unchanged)."""
    for key in _GROUP_DURATIONS:
        if getattr(args, key) is not None:
            getattr(request, key).FromMilliseconds(getattr(args, key))
    for key in _GROUP_COUNTS:
        if getattr(args, key) is not None:
            setattr(request, key, getattr(args, key))


def _group_create(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """``chronicle group create NAME --aggregate-types ... --start-from ...``:
    CreateGroup with every field it takes; prints the group as created."""
    after_position, from_end = args.start_from
    request = subscription_group_service_pb2.CreateGroupRequest(
        name=args.name,
        filter=subscription_group_service_pb2.GroupFilter(
            aggregate_types=args.aggregate_types or [],
            event_types=args.event_types or [],
            origin=args.origin or "",
            tenant=args.tenant or "",
        ),
        after_position=after_position,
        from_end=from_end,
    )
    _set_group_settings(request, args)
    stub = subscription_group_service_pb2_grpc.SubscriptionGroupServiceStub(channel)
    _print(_as_dict(stub.CreateGroup(request, timeout=args.timeout).group))
    return EXIT_OK


def _group_update(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """``chronicle group update NAME --ack-timeout ...``: UpdateGroup with the
    settings given (none: the server's NO_SETTING_GIVEN)."""
    fixed = [option for option, given in _FIXED_AT_CREATION.items() if getattr(args, given) is not None]
    if fixed:
        raise _UsageError(
            f"{', '.join(fixed)}: fixed at a group's creation, UpdateGroup changes no filter nor start"
            " (what was settled under the old filter is not read again): nothing was sent",
            "create another group with them (chronicle group create NEW_NAME ...), then delete this one",
        )
    request = subscription_group_service_pb2.UpdateGroupRequest(name=args.name)
    _set_group_settings(request, args)
    stub = subscription_group_service_pb2_grpc.SubscriptionGroupServiceStub(channel)
    _print(_as_dict(stub.UpdateGroup(request, timeout=args.timeout).group))
    return EXIT_OK


_FIXED_AT_CREATION = {
    "--aggregate-types": "aggregate_types",
    "--event-types": "event_types",
    "--origin": "origin",
    "--tenant": "tenant",
    "--start-from": "start_from",
}


def _group_delete(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """``chronicle group delete NAME --confirm NAME``: without the name
    confirmed, says what would go (as ``--drop-states`` says how many) and
    deletes nothing; a group the caller cannot see is GROUP_NOT_FOUND."""
    stub = subscription_group_service_pb2_grpc.SubscriptionGroupServiceStub(channel)
    if args.confirm == args.name:
        stub.DeleteGroup(subscription_group_service_pb2.DeleteGroupRequest(name=args.name), timeout=args.timeout)
        _print({"group": args.name, "deleted": True})
        return EXIT_OK
    listed = stub.ListGroups(subscription_group_service_pb2.ListGroupsRequest(), timeout=args.timeout).groups
    group = next((info for info in listed if info.name == args.name), None)
    if group is None:
        return _report(
            "NOT_FOUND",
            "GROUP_NOT_FOUND",
            f"subscription group {args.name!r} does not exist, or this caller may not consume it",
            {"group": args.name},
        )
    asked = "" if args.confirm is None else f" (--confirm said {args.confirm!r})"
    raise _UsageError(
        f"group {args.name} has {group.parked} parked events and {len(group.consumers)} consumers connected,"
        f" at position {group.position} of {group.log_head}; deleting it deletes its checkpoints and parked"
        f" events and ends its consumers' streams{asked}: nothing was deleted",
        f"to delete it: chronicle group delete {shlex.quote(args.name)} --confirm {shlex.quote(args.name)}",
    )


def _group_setting_options(parser: argparse.ArgumentParser, *, updating: bool) -> None:
    """The settings CreateGroup and UpdateGroup both take, as options."""
    parser.add_argument(
        "--max-delivery-attempts", type=_at_least_one, metavar="N", help="deliveries before an event is parked (5)"
    )
    parser.add_argument("--retry-backoff", type=_milliseconds, metavar="DURATION", help="first retry's wait (1s)")
    parser.add_argument(
        "--max-retry-backoff", type=_milliseconds, metavar="DURATION", help="longest wait between retries (60s)"
    )
    parser.add_argument(
        "--ack-timeout", type=_milliseconds, metavar="DURATION", help="time a consumer has to ack an event (30s)"
    )
    parser.add_argument(
        "--max-unanswered-timeouts",
        type=_count,
        metavar="N",
        help="ack timeouts in a row after which a silent consumer is cut (3; 0: never)",
    )
    parser.add_argument(
        "--segments",
        type=_at_least_one,
        metavar="N",
        help="refused unless the group's own count (fixed at creation)"
        if updating
        else "a power of two, 1 to 1024: the most consumers sharing the work (16); fixed for the group's life",
    )


def _group_verb_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    """``chronicle group create``, ``update`` and ``delete`` (admin, audited)."""
    create = commands.add_parser(
        "group create",
        help="create a subscription group (admin)",
        description="CreateGroup: a filter (the lists are ORed within, ANDed together), a start, settings;"
        " prints the group as created. DURATION: 500ms, 30s, 2m, 1h (a bare number is seconds)",
    )
    create.add_argument("name", help="1 to 100 letters, digits, '.', '_' or '-'")
    create.add_argument("--aggregate-types", nargs="+", metavar="TYPE", help="only these aggregate types (all)")
    create.add_argument("--event-types", nargs="+", metavar="TYPE", help="only these event message names (all)")
    create.add_argument("--origin", help="only events of commands from this origin (any)")
    create.add_argument("--tenant", help="the group's tenant (the creator's own, if it has one)")
    create.add_argument(
        "--start-from",
        type=_start,
        default=(0, False),
        metavar="beginning|end|POSITION",
        help="the log's beginning (default), its end (only new events) or after a position",
    )
    _group_setting_options(create, updating=False)
    create.set_defaults(run=_group_create, remote=True)

    update = commands.add_parser(
        "group update",
        help="change a subscription group's settings while it is consumed (admin)",
        description="UpdateGroup: the settings given change, the others stay; its position, checkpoints and"
        " parked events stay. Prints the group as updated",
    )
    update.add_argument("name", help="the group")
    _group_setting_options(update, updating=True)
    for option, dest in _FIXED_AT_CREATION.items():  # named, to say why they cannot change
        update.add_argument(option, dest=dest, nargs="*", help=argparse.SUPPRESS)
    update.set_defaults(run=_group_update, remote=True)

    delete = commands.add_parser(
        "group delete",
        help="delete a subscription group with its checkpoints and parked events (admin)",
        description="DeleteGroup; without --confirm NAME it says what would go and deletes nothing",
    )
    delete.add_argument("name", help="the group")
    delete.add_argument("--confirm", metavar="NAME", help="the group's name again: it is deleted")
    delete.set_defaults(run=_group_delete, remote=True)
    return [create, update, delete]


def _parked_command_json(types: RemoteTypes, parked: reaction_service_pb2.ParkedCommand) -> dict[str, object]:
    """A parked command as JSON, its command unpacked with the server's
    types (Protobuf's JSON mapping of the Any would look its type up in this
    process's own, which knows no plugin's messages)."""
    envelope = reaction_service_pb2.ParkedCommand()
    envelope.CopyFrom(parked)
    envelope.ClearField("command")
    shown = _as_dict(envelope)
    if not parked.HasField("deadline"):  # a parked deadline has no command: its "deadline" says what it is
        shown["command"] = types.unpack(parked.command)
    return shown


def _parked_group_event(parked: subscription_group_service_pb2.GroupParkedEvent) -> dict[str, object]:
    """A group's parked event as ``chronicle group NAME --parked`` prints it:
    its type and when it was parked "unknown" for one parked by a server
    from before they were kept (subscriptions.md), so that every line has
    both keys."""
    shown = _as_dict(parked)
    shown["event_type"] = parked.event_type or "unknown"
    shown["parked_at"] = str(shown.get("parked_at", "unknown"))
    return shown


def _as_dict(message: object) -> dict[str, object]:
    shown: dict[str, object] = json_format.MessageToDict(
        message,  # type: ignore[arg-type]
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return shown


# A tail's stream is reopened after the codes the client SDK's subscribe
# reopens after (its ``errors.RETRYABLE``; RESOURCE_EXHAUSTED only with a
# RetryInfo: a server at its --max-subscriptions, not gRPC's own "message too
# large"), for as long as the tail runs, as the SDK's subscribe is: waiting
# TAIL_INITIAL_BACKOFF, doubled per failure in a row up to TAIL_MAX_BACKOFF
# (plus up to a fifth, so that tails refused together do not come back
# together), never less than the server's RetryInfo. Not imported from the
# SDK: importing its package costs every CLI call about 30 ms of start-up.
_TAIL_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
TAIL_INITIAL_BACKOFF = 0.05
TAIL_MAX_BACKOFF = 2.0
# While the stream stays broken, the tail says so on stderr when the reason
# changes, and otherwise at most once in this many seconds.
TAIL_REPORT_EVERY = 30.0
# UNAUTHENTICATED reasons that a token file renewed meanwhile may cure: the
# client SDK's (``REFRESHABLE``, one list for both); at most
# ``TAIL_STALE_TOKEN_ATTEMPTS`` failures in a row (the SDK's
# ``STALE_TOKEN_ATTEMPTS``): an agent that keeps writing a stale token will
# not be cured by reading it again for ever.
_STALE_TOKEN = REFRESHABLE
TAIL_STALE_TOKEN_ATTEMPTS = 5
# The highest position a Subscribe takes (the stores' signed 64-bit integers).
_MAX_POSITION = 2**63 - 1


def _retry_info(error: grpc.RpcError) -> float | None:
    """The RetryInfo delay of a failed call, in seconds (None if none)."""
    status = rpc_status.from_call(error)  # grpc raises the call itself
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


def _tail(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """Print the events as they commit. A stream that ends with an error
    worth retrying (a server restarting or stopping, a connection's age,
    changed grants, a full server: the codes of ``_TAIL_RETRYABLE``; with
    --token-file, a token that expired or was revoked, read again from the
    file) is opened again after the last position whose events were all
    printed (not the last event's when it may be the first piece of a
    split event: ``completes_position``), passing over those of the next
    position printed already, so nothing is skipped or repeated, and the
    resume point said on stderr is one to give ``--from``, for as long as
    the tail runs: a server that stays
    away is waited for (said on stderr), as the client SDK's subscribe
    waits. Until a server has answered it once, though, a tail that reaches
    none (UNAVAILABLE without a reason: nothing listening, a wrong address)
    exits 1 with the hint any command gives. Other errors exit 1 at once;
    Ctrl-C exits 130."""
    import random

    start = str(args.start).strip().lower()
    if start != "end" and not (start.isascii() and start.isdigit() and int(start) <= _MAX_POSITION):
        raise ValueError(f"--from takes 'end' or a position from 0 to {_MAX_POSITION}, got {args.start!r}")
    if args.after_event_id and (start == "end" or int(start) == 0):
        # The id is of the event at the position resumed after: with none, nothing to check it against.
        raise ValueError("--after-event-id goes with --from POSITION (above 0): the id of the event at that position")
    types = RemoteTypes(channel)
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    request = event_service_pb2.SubscribeRequest(
        from_end=start == "end",
        after_position=int(start) if start != "end" else 0,
        # A tail resumed across runs is checked as one resumed within a run:
        # a log gone back under its position is refused (LOG_REWOUND).
        after_event_id=args.after_event_id or "",
        event_types=args.type or (),
        aggregate_types=args.aggregate_type or (),
        aggregate_id=args.aggregate or "",
        origin=args.origin or "",
    )
    # An upcaster may split one stored event into several at its position:
    # a stream broken after the first is resumed after the position before
    # (the last one complete), passing over the events of the split one
    # printed already, so none is skipped or printed twice.
    printed_at, printed = request.after_position, 0  # the last event's position, and its events printed
    printed_id = ""  # the id of the last event printed
    answered = False  # a server answered this tail (a message, or a status of its own)
    failures = stale = 0  # in a row, since the last message
    said, said_at = "", float("-inf")  # what stderr last told of a broken stream, and when
    while True:
        call = stub.Subscribe(request)
        repeats = printed if printed_at > request.after_position else 0
        try:
            for response in call:
                answered, failures, stale = True, 0, 0
                if response.HasField("event"):
                    position = response.event.position
                    if repeats and position == printed_at:
                        repeats -= 1
                        continue
                    repeats = 0
                    _print(_event_json(types, response.event))
                    if position != printed_at:
                        # An event of a higher position: the one before is complete.
                        if printed_at > request.after_position:
                            request.after_position, request.after_event_id = printed_at, printed_id
                        printed_at, printed = position, 0
                    printed += 1
                    # Resumed with the id of the event seen at the position, so that
                    # a log gone back is refused (LOG_REWOUND), not skipped over.
                    printed_id = response.event.event_id
                    if response.completes_position:
                        request.after_position, request.after_event_id = position, printed_id
                    request.from_end = False
                elif response.HasField("caught_up"):
                    request.after_position, request.from_end = response.caught_up.position, False
                    request.after_event_id = response.caught_up.event_id
                    if args.checkpoints:
                        _print(_mark("caught_up", response.caught_up.position, response.caught_up.event_id))
                    if args.until_caught_up:
                        return EXIT_OK
                elif response.HasField("checkpoint"):
                    request.after_position, request.from_end = response.checkpoint.position, False
                    request.after_event_id = response.checkpoint.event_id
                    if args.checkpoints:
                        _print(_mark("checkpoint", response.checkpoint.position, response.checkpoint.event_id))
            return EXIT_OK
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            reason = _error_info(error)[0]
            delay = _retry_info(error)
            if reason:
                answered = True  # a Chronicle server said why
            if code == grpc.StatusCode.UNAUTHENTICATED and args.token_file and reason in _STALE_TOKEN:
                stale += 1
                if stale >= TAIL_STALE_TOKEN_ATTEMPTS:
                    raise
            elif code not in _TAIL_RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is None):
                raise
            elif code == grpc.StatusCode.UNAVAILABLE and not answered:
                raise  # no server ever answered: said as for any command, with what to do
            failures += 1
            wait = min(TAIL_MAX_BACKOFF, TAIL_INITIAL_BACKOFF * 2 ** min(failures - 1, 32))
            wait = max(wait * (1 + 0.2 * random.random()), delay or 0.0)
            why = reason or (code.name if code is not None else "")
            where = "at the end" if request.from_end else f"after position {request.after_position}"
            now = time.monotonic()
            if failures == 1 or why != said:
                print(f"tail: the stream ended ({why}); resuming {where}", file=sys.stderr)
                said, said_at = why, now
            elif now - said_at >= TAIL_REPORT_EVERY:
                print(f"tail: still resuming {where} ({why}, {failures} attempts)", file=sys.stderr)
                said_at = now
            time.sleep(wait)
        finally:
            call.cancel()


def _mark(kind: str, position: int, event_id: str) -> dict[str, object]:
    """A checkpoint or caught-up line of ``tail --checkpoints``: the position
    to give ``--from`` and, when the server sent one, the id to give
    ``--after-event-id`` with it."""
    return {kind: position, "event_id": event_id} if event_id else {kind: position}


def _get(args: argparse.Namespace, channel: grpc.Channel) -> int:
    types = RemoteTypes(channel)
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    request = event_service_pb2.GetAggregateRequest(aggregate_id=args.aggregate_id)
    if args.at_version is not None:
        request.at_version = args.at_version
    elif args.at_time is not None:
        request.at_time.FromJsonString(args.at_time)
    response = stub.GetAggregate(request, timeout=args.timeout)
    _print(
        {
            "aggregate_id": response.aggregate_id,
            "aggregate_type": response.aggregate_type,
            "version": response.version,
            "state": types.unpack(response.state),
        }
    )
    return EXIT_OK


def _cluster(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """The cluster as the server sees it: one JSON line per live member
    (its id, address, console, the Chronicle version it runs and the schema
    version its code knows, and how many partitions it owns), then one of
    the topology's epoch and partition count. Two versions at once: a
    rolling upgrade under way; "" a member of a version from before 0.2.0."""
    stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
    topology = stub.GetTopology(cluster_service_pb2.GetTopologyRequest(), timeout=args.timeout).topology
    for member in topology.members:
        owned = sum(1 for owner in topology.partition_owners if owner == member.member_id)
        _print({**_as_dict(member), "partitions": owned})
    _print({"epoch": topology.epoch, "partition_count": topology.partition_count})
    return EXIT_OK


def _health(args: argparse.Namespace, channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    _print({"service": args.service, "status": status})
    return EXIT_OK if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_REFUSED


def _audit(args: argparse.Namespace, channel: grpc.Channel) -> int:
    request = admin_service_pb2.QueryAuditRequest(
        aggregate_id=args.aggregate or "",
        principal=args.principal or "",
        command_id=args.command_id or "",
        command_type=args.command_type or "",
        outcome={
            None: admin_service_pb2.AUDIT_OUTCOME_UNSPECIFIED,
            "accepted": admin_service_pb2.AUDIT_OUTCOME_ACCEPTED,
            "refused": admin_service_pb2.AUDIT_OUTCOME_REFUSED,
        }[args.outcome],
        limit=args.limit,
    )
    for field_name in ("since", "until"):
        value = getattr(args, field_name)
        if value:
            getattr(request, field_name).FromJsonString(value)
    response = admin_service_pb2_grpc.AdminServiceStub(channel).QueryAudit(request, timeout=args.timeout)
    for entry in response.entries:
        _print(json_format.MessageToDict(entry, preserving_proto_field_name=True))
    return EXIT_OK


def _forget(args: argparse.Namespace, channel: grpc.Channel) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    if (args.aggregate_id is None) == (args.prefix is None):
        raise _UsageError(
            "forget takes an aggregate id or --prefix P (one of the two)",
            "chronicle forget ID, or chronicle forget --prefix 'acme:' to see how many match",
        )
    if args.confirm is not None and args.prefix is None:
        raise _UsageError("--confirm goes with --prefix", "add --prefix P, or leave --confirm out")
    if args.prefix is not None:
        return _forget_prefix(args, stub)
    response = stub.ForgetAggregate(
        admin_service_pb2.ForgetAggregateRequest(aggregate_id=args.aggregate_id), timeout=args.timeout
    )
    deleted = [
        {
            "name": entry.name,
            "process_states": entry.process_states,
            "parked_commands": entry.parked_commands,
            "documents": entry.documents,
            "other_subjects": list(entry.other_subjects),
            "other_subjects_omitted": entry.other_subjects_omitted,
            "other_subjects_withheld": entry.other_subjects_withheld,
        }
        for entry in response.deleted_documents
    ]
    _print(
        {
            "aggregate_id": args.aggregate_id,
            "already_forgotten": response.already_forgotten,
            # When its key was erased: now, or by the call that first forgot it.
            "forgotten_at": response.forgotten_time.ToJsonString() if response.HasField("forgotten_time") else None,
            "deleted": deleted,
        }
    )
    for entry in response.deleted_documents:
        if entry.process_states:
            # A saga stopped in flight: what it did (a charge, a reservation) stays done.
            print(
                f"warning: reaction {entry.name}: {entry.process_states} process state(s) that named"
                f" {args.aggregate_id} deleted in flight; their commands' effects stay (docs/plugins.md, Forgetting)",
                file=sys.stderr,
            )
            if forgotten.other_subjects(entry):
                # Where those processes stood: the aggregates to finish or compensate by hand.
                print(
                    f"warning: reaction {entry.name}: the other aggregates they named, to finish or compensate"
                    f" by hand: {forgotten.other_subjects(entry)}",
                    file=sys.stderr,
                )
        elif entry.documents and forgotten.other_subjects(entry):
            # Documents other aggregates were derived from too: theirs are gone for now.
            print(
                f"warning: projection {entry.name}: documents shared with other aggregates deleted (theirs are"
                f" missing until each one's next event, or a rebuild): {forgotten.other_subjects(entry)}",
                file=sys.stderr,
            )
    return EXIT_OK


def _forget_prefix(args: argparse.Namespace, stub: admin_service_pb2_grpc.AdminServiceStub) -> int:
    """``forget --prefix P [--confirm N]``: first says how many match, then
    forgets them if that many still do (the server checks, in batches)."""
    request = admin_service_pb2.ForgetAggregatesRequest(prefix=args.prefix, confirm=args.confirm)
    try:
        # A tenant's thousands of aggregates take longer than a call's usual
        # --timeout: its batches are given FORGET_DEADLINE (or --timeout if longer).
        response = stub.ForgetAggregates(request, timeout=max(args.timeout, FORGET_DEADLINE))
    except grpc.RpcError as error:
        reason, metadata = _error_info(error)
        if reason not in ("CONFIRMATION_REQUIRED", "CONFIRMATION_MISMATCH"):
            raise
        matching = metadata.get("matching", "?")
        asked = "" if args.confirm is None else f" (--confirm said {args.confirm})"
        raise _UsageError(
            f"{matching} aggregates with a key have an id starting with {args.prefix!r}{asked}: nothing was forgotten",
            f"to see them: chronicle aggregates --prefix {shlex.quote(args.prefix)}\n"
            f"to forget them: chronicle forget --prefix {shlex.quote(args.prefix)} --confirm {matching}",
        ) from None
    _print(
        {
            "prefix": args.prefix,
            "forgotten": response.forgotten,
            "remaining": response.remaining,
            "not_encrypted": response.not_encrypted,
            "not_encrypted_ids": list(response.not_encrypted_ids),
            "without_key": response.without_key,
            "deleted": [
                json_format.MessageToDict(d, preserving_proto_field_name=True) for d in response.deleted_documents
            ],
        }
    )
    if response.not_encrypted or response.without_key:
        print(
            f"warning: {response.not_encrypted + response.without_key} aggregates under {args.prefix!r} hold"
            " payloads in the clear, which forgetting cannot shred: delete them (chronicle delete ID), then"
            " forget them (docs/security.md, Tenant offboarding)",
            file=sys.stderr,
        )
    if response.remaining:
        print(
            f"warning: {response.remaining} aggregates remain; to forget them: chronicle forget --prefix"
            f" {shlex.quote(args.prefix)} --confirm {response.remaining}",
            file=sys.stderr,
        )
    return EXIT_OK


def _aggregates(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """``aggregates [--prefix P] [--type T]``: every page, one JSON line each."""
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    token = ""
    while True:
        request = admin_service_pb2.ListAggregatesRequest(
            prefix=args.prefix, aggregate_type=args.type or "", page_size=1000, page_token=token
        )
        page = stub.ListAggregates(request, timeout=args.timeout)
        for aggregate in page.aggregates:
            _print(
                {
                    "aggregate_id": aggregate.aggregate_id,
                    "aggregate_type": aggregate.aggregate_type,
                    "version": aggregate.version,
                    "deleted": aggregate.deleted,
                    "has_key": aggregate.has_key,
                    "forgotten": aggregate.forgotten,
                }
            )
        token = page.next_page_token
        if not token:
            return EXIT_OK


def _rewrap_keys(args: argparse.Namespace, channel: grpc.Channel) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    response = stub.RewrapKeys(admin_service_pb2.RewrapKeysRequest(), timeout=args.timeout)
    _print({"rewrapped": response.rewrapped})
    return EXIT_OK


def _export(args: argparse.Namespace, channel: grpc.Channel) -> int:
    from service.transfer.exporter import ExportSelection
    from service.transfer.files import STDIO, format_for, output, write_all
    from service.transfer.stream import Writer

    selection = ExportSelection(
        snapshots=args.snapshots, commands=args.commands, aggregate_ids=tuple(dict.fromkeys(args.aggregate or ()))
    )
    export_format = format_for(args.file, args.format)
    with output(args.file) as out:
        if args.database_url:
            counts = asyncio.run(_export_local(args.database_url, selection, out, export_format, args.quiet))
        else:
            types = RemoteTypes(channel)
            request = admin_service_pb2.ExportLogRequest(
                include_snapshots=selection.snapshots,
                include_commands=selection.commands,
                aggregate_ids=selection.aggregate_ids,
            )
            call = admin_service_pb2_grpc.AdminServiceStub(channel).ExportLog(request)
            records = iter(call)
            header = next(records)
            reporter = Reporter("export", total=header.header.log_head, unit="positions", quiet=args.quiet)
            writer = Writer(out, export_format, pool=types.pool)
            writer.write(header)
            counts = write_all(records, writer, reporter)
            reporter.close(_counted(counts))
    summary = {
        "file": args.file,
        "format": export_format,
        **{f"{kind}s": n for kind, n in sorted(counts.items()) if kind not in ("header", "end")},
    }
    if args.file == STDIO:
        print(json.dumps(summary), file=sys.stderr)
    else:
        _print(summary)
    return EXIT_OK


async def _export_local(
    url: str, selection: ExportSelection, out: BinaryIO, export_format: str, quiet: bool
) -> dict[str, int]:
    """An export read straight from the store at ``url`` (the server may be
    stopped), opened read only: a backup changes nothing, not even the
    schema's version, and works on a standby or a read-only file."""
    from service.app import build_registry
    from service.store.base import Store
    from service.store.factory import open_store, store_kind
    from service.store.schema_use import SchemaUse
    from service.transfer.exporter import Exporter
    from service.transfer.stream import Writer

    build_registry(load_settings(None, os.environ))  # the plugins' payload types, for JSON
    adapter = open_store(url, pool_size=2, use=SchemaUse.READ_ONLY)
    await adapter.open()
    try:
        writer = Writer(out, export_format)
        counts: dict[str, int] = {}
        reporter: Reporter | None = None
        async for record in Exporter(Store.of(adapter), source=store_kind(adapter)).records(selection):
            writer.write(record)
            kind = record.WhichOneof("record") or ""
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "header":
                reporter = Reporter("export", total=record.header.log_head, unit="positions", quiet=quiet)
            elif kind == "event" and reporter is not None:
                reporter.update(record.event.event.position)
        if reporter is not None:
            reporter.close(_counted(counts))
        return counts
    finally:
        await adapter.close()


def _counted(counts: dict[str, int]) -> str:
    shown = [f"{n:,} {kind.replace('_', ' ')}s" for kind, n in sorted(counts.items()) if kind not in ("header", "end")]
    return ("done: " + ", ".join(shown)) if shown else "done: empty"


def _import(args: argparse.Namespace, channel: grpc.Channel) -> int:
    from service.transfer.files import Source
    from service.transfer.importer import ImportOptions

    options = ImportOptions(
        overwrite=args.overwrite,
        restore_deleted=args.restore_deleted,
        even_if_read_models_behind=args.even_if_read_models_behind,
        read_models_wait=args.read_models_wait,
        derive_per_tenant_claims=args.derive_per_tenant_claims,
    )
    leave_out = frozenset(args.leave_out or ())
    if args.database_url:
        summary = asyncio.run(
            _import_local(
                args.database_url,
                args.file,
                options,
                args.quiet,
                leave_out,
                max_event_bytes=args.max_event_bytes,
                master_key_file=args.master_key_file,
            )
        )
        _warn_unclaimed(summary)
        _warn_to_rebuild(summary)
        _print(summary)
        return EXIT_OK
    types = RemoteTypes(channel)
    _check_left_out(args.file, leave_out, types.pool)
    source = Source(args.file, pool=types.pool)
    reporter = Reporter("import", total=source.total, unit="bytes" if source.total else "records", quiet=args.quiet)
    try:
        response = _send_import(
            channel,
            _leaving_out(source.records(), leave_out),
            options,
            on_sent=lambda sent: reporter.update(source.position if source.total else sent),
        )
    finally:
        source.close()
    counts = _import_counts(response)
    reporter.close(_import_done(counts))
    _warn_unclaimed(counts)
    _warn_to_rebuild(counts)
    _print(counts)
    return EXIT_OK


def _check_left_out(path: str, leave_out: frozenset[str], pool: Any = None) -> None:
    """Refuse, before anything is imported, a ``--leave-out`` aggregate the
    export holds no record of (NOT_IN_EXPORT): a typo would leave out
    nothing, and with --overwrite replace the aggregate it was to protect.
    The file is read through once for its aggregates (as restore's
    NOT_IN_ARCHIVE); standard input, read once, is checked at its end, before
    the importer sees that end (``only_aggregates``): an --overwrite import
    has then written nothing, another the batches before."""
    from service.transfer.files import STDIO, Source
    from service.transfer.restoring import aggregates_in, not_in_export

    if not leave_out or path == STDIO:
        return
    scan = Source(path, pool=pool)
    try:
        held = aggregates_in(scan.records())
    except InvalidInput:
        return  # a file that cannot be read through: the import says where, as without --leave-out
    finally:
        scan.close()
    if missing := sorted(leave_out - held):
        raise not_in_export(missing, path, held)


def _leaving_out(
    records: Iterator[export_pb2.ExportRecord], leave_out: frozenset[str]
) -> Iterator[export_pb2.ExportRecord]:
    """``records`` but those of the aggregates of ``leave_out``."""
    from service.transfer.restoring import only_aggregates

    return only_aggregates(records, set(), leaving_out=leave_out) if leave_out else records


def _send_import(
    channel: grpc.Channel,
    records: Iterator[export_pb2.ExportRecord],
    options: ImportOptions,
    *,
    on_sent: Callable[[int], None] = lambda sent: None,
) -> admin_service_pb2.ImportLogResponse:
    """``ImportLog`` of ``records``, read from a file. A file that cannot be
    read on (cut short, or holding something that is not a record) ends the
    call's stream there, so that the server writes what came, as for a
    stream that ends early; the file's error is then raised, unless the
    server refused something that came before it."""
    unreadable: list[ChronicleError] = []

    def requests() -> Iterator[admin_service_pb2.ImportLogRequest]:
        for sent in itertools.count(1):
            try:
                record = next(records)
            except StopIteration:
                return
            except ChronicleError as error:
                # The file is at fault, not the server: say so once the call ends.
                unreadable.append(error)
                return
            request = admin_service_pb2.ImportLogRequest(record=record)
            if sent == 1:
                request.options.overwrite = options.overwrite
                request.options.restore_deleted = options.restore_deleted
                request.options.even_if_read_models_behind = options.even_if_read_models_behind
                request.options.derive_per_tenant_claims = options.derive_per_tenant_claims
                # At least 1 ms: 0 would be the server's default.
                request.options.read_models_wait_ms = max(1, round(options.read_models_wait * 1000))
            yield request
            on_sent(sent)

    try:
        response: admin_service_pb2.ImportLogResponse = admin_service_pb2_grpc.AdminServiceStub(channel).ImportLog(
            requests()
        )
    except grpc.RpcError as refused:
        code = refused.code() if hasattr(refused, "code") else None
        if not unreadable or code != grpc.StatusCode.INVALID_ARGUMENT:
            raise  # the server refused what came before the file's fault (or could not be reached)
        # The server saw the stream end early: it wrote what came.
        error = unreadable[0]
        if _error_info(refused)[0] == "EXPORT_INCOMPLETE" and error.reason == "EXPORT_INCOMPLETE":
            error.message += (
                "; nothing was written (an import with --overwrite writes only a stream it read whole): import the"
                " whole export again"
                if options.overwrite
                else "; the records before it were imported: import the whole export again to finish (what is"
                " there already is skipped)"
            )
        raise error from None
    if unreadable:
        raise unreadable[0]
    return response


def _import_counts(response: admin_service_pb2.ImportLogResponse) -> dict[str, Any]:
    """The response's fields: counts, and the names it lists."""
    return {
        field.name: list(value) if isinstance(value := getattr(response, field.name), Iterable) else int(value)
        for field in response.DESCRIPTOR.fields
    }


def _import_done(counts: dict[str, Any]) -> str:
    """An import's last progress line."""
    done = f"done: {counts['events_written']:,} events written, {counts['events_skipped']:,} already there"
    if counts.get("forgotten_skipped"):
        done += f"; {counts['forgotten_skipped']:,} records of forgotten aggregates left out"
    if counts.get("global_claims_left_out"):
        done += f"; {counts['global_claims_left_out']:,} global claims of per-tenant scopes left out"
    if counts.get("commands_past_events_left_out"):
        done += f"; {counts['commands_past_events_left_out']:,} command records past their aggregates' events left out"
    if counts.get("claims_derived"):
        done += f"; {counts['claims_derived']:,} claims derived from the state of the imported aggregates"
    if counts.get("claims_released"):
        done += f"; {counts['claims_released']:,} claims their state no longer declares released"
    return done


def _warn_unclaimed(counts: dict[str, Any]) -> None:
    """Say, even with --quiet, that imported aggregates hold no claims their
    plugin says they hold: their values are free for others to claim."""
    unclaimed = counts.get("aggregates_without_claims", 0)
    if unclaimed:
        print(
            f"warning: AGGREGATES_WITHOUT_CLAIMS: {unclaimed:,} imported aggregates of types whose plugin declares"
            " claims came without claim records, and their claims could not be derived (the log says why for each):"
            ' the values they hold are not unique until they are claimed (docs/migration.md, "Uniqueness")',
            file=sys.stderr,
            flush=True,
        )


def _warn_to_rebuild(counts: dict[str, Any]) -> None:
    """Say, even with --quiet, which projections the import left unlike a
    rebuild (service/transfer/read_models.py)."""
    names = counts.get("projections_to_rebuild") or []
    if names:
        print(
            f"warning: PROJECTIONS_TO_REBUILD: {', '.join(names)} applied events this import replaced (or were behind"
            " a tombstone it replaced): their documents differ from a rebuild's; rebuild them (chronicle projection"
            ' rebuild NAME; docs/export-format.md, "Overwriting")',
            file=sys.stderr,
            flush=True,
        )


async def _import_local(
    url: str,
    path: str,
    options: ImportOptions,
    quiet: bool,
    leave_out: frozenset[str] = frozenset(),
    *,
    max_event_bytes: int | None = None,
    master_key_file: str | None = None,
) -> dict[str, Any]:
    """An import written straight into the store at ``url``. Its events are
    held to ``max_event_bytes``, else to the servers' --max-event-bytes as
    the environment sets it (CHRONICLE_MAX_EVENT_BYTES), else its default:
    the limit of the servers that will read them. Its master keys are those
    of ``master_key_file``, else the environment's, as serve takes them;
    without any, nothing sealed is imported (OfflineWithoutKeys)."""
    from service.app import build_master_keys, build_registry
    from service.processing.state import AggregateLoader
    from service.store.base import Store
    from service.store.encrypted import encrypted
    from service.store.encryption import Keyring
    from service.store.factory import open_store
    from service.transfer.checked_first import CheckedFirst
    from service.transfer.files import Source
    from service.transfer.importer import Importer
    from service.transfer.sealing import ImportSealing, OfflineWithoutKeys, Sealing

    # The plugins' payload types, for JSON lines, and state types, which
    # snapshots must parse as; the master keys, as the server takes them
    # (only the one flag is read from the command's: its others are not serve's).
    settings = load_settings(argparse.Namespace(master_key_file=master_key_file), os.environ)
    registry = build_registry(settings)
    master_keys = build_master_keys(settings)
    _check_left_out(path, leave_out)
    source = Source(path)
    reporter = Reporter("import", total=source.total, unit="bytes" if source.total else "records", quiet=quiet)
    adapter = open_store(url, pool_size=2)
    await adapter.open()
    try:
        store = Store.of(adapter)

        # With master keys, what comes in the clear is sealed as the server
        # would; without, nothing sealed is taken (an encrypted store's export
        # needs the keys that open it), nor anything in the clear into a store
        # that is encrypted (transfer/sealing.py).
        def sealing_of() -> ImportSealing:
            if not master_keys:
                return OfflineWithoutKeys()
            return Sealing(Keyring(store.keys, master_keys), lambda: master_keys)

        # Claims derived for aggregates that came without any are of their
        # state as the server's commands see it: opened with the master keys.
        readable = encrypted(store, Keyring(store.keys, master_keys)) if master_keys else store

        def make(checking_only: bool) -> Importer:
            return Importer(
                store,
                options=options,
                on_progress=lambda summary: reporter.update(source.position if source.total else summary.records),
                registry=registry,
                sealing=sealing_of(),
                load_state=AggregateLoader(readable, registry).state_of,
                checking_only=checking_only,
                max_event_bytes=max_event_bytes or settings.max_event_bytes,
            )

        # Replacing aggregates: nothing is written before the whole file is read and checked (checked_first.py).
        importer = CheckedFirst(make) if options.overwrite else make(False)
        await importer.run_file(_leaving_out(source.records(), leave_out))
    finally:
        source.close()
        await adapter.close()
    from service.api.transfers import response

    counts = _import_counts(response(importer.summary))
    reporter.close(_import_done(counts))
    return counts


def _convert_eventsourcing(args: argparse.Namespace) -> int:
    from service.app import build_registry
    from service.transfer.eventsourcing import Tally, eventsourcing_export
    from service.transfer.files import STDIO, format_for, output
    from service.transfer.stream import Writer

    registry = build_registry(load_settings(None, os.environ))
    mapping = _load_callable(args.mapping)
    export_format = format_for(args.file, args.format)

    async def convert(out: BinaryIO) -> dict[str, int]:
        writer = Writer(out, export_format)
        reporter: Reporter | None = None
        events = claims = 0
        tally = Tally()
        records = eventsourcing_export(
            args.from_url, table=args.table, schema=args.schema, mapping=mapping, registry=registry, tally=tally
        )
        async for record in records:
            writer.write(record)
            if record.HasField("header"):
                reporter = Reporter("convert", total=record.header.log_head, unit="notifications", quiet=args.quiet)
            elif record.HasField("event") and reporter is not None:
                events += 1
                reporter.update(record.event.event.position)
            elif record.HasField("claim"):
                claims += 1
        if reporter is not None:
            reporter.close(f"done: {events:,} events, {tally.left_out:,} left out by the mapping, {claims:,} claims")
        # Every event read is either converted or counted as left out (the mapping returned None).
        # The claims the mapping gave that are held at the end: 0 says no value will be unique.
        return {"events": events, "left_out": tally.left_out, "claims": claims}

    with output(args.file) as out:
        counts = asyncio.run(convert(out))
    summary = {"file": args.file, "format": export_format, **counts}
    print(json.dumps(summary), file=sys.stderr if args.file == STDIO else sys.stdout)
    return EXIT_OK


def _delete(args: argparse.Namespace, channel: grpc.Channel) -> int:
    request = admin_service_pb2.DeleteAggregateRequest(aggregate_id=args.aggregate_id, reason=args.reason or "")
    if args.expected_version is not None:
        request.expected_version = args.expected_version
    response = admin_service_pb2_grpc.AdminServiceStub(channel).DeleteAggregate(request, timeout=args.timeout)
    _print(
        {
            "aggregate_id": args.aggregate_id,
            "already_deleted": response.already_deleted,
            "events_deleted": response.events_deleted,
            "tombstone_version": response.tombstone.version,
        }
    )
    return EXIT_OK


def _archive(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """Export the aggregates a rule picks to one file (complete and synced
    before anything is deleted), then delete each at the version archived:
    one that changed meanwhile is kept, and said so."""
    import datetime

    from service.settings import seconds
    from service.transfer.files import make_folder, output
    from service.transfer.stream import BINARY, Writer

    rule = admin_service_pb2.ArchiveRule(
        aggregate_type=args.type, last_event_types=args.last_event or (), limit=args.limit
    )
    if args.untouched_since:
        rule.untouched_since.FromJsonString(args.untouched_since)
    elif args.untouched_for:
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds(args.untouched_for))
        rule.untouched_since.FromDatetime(since)
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    request = admin_service_pb2.ExportLogRequest(include_snapshots=True, rule=rule)
    records = stub.ExportLog(request)
    # The server's answer first (its header, or its refusal of the rule: an
    # unknown type is UNKNOWN_AGGREGATE_TYPE), then a file: the type names
    # the file, and nothing is made of a type the server did not accept.
    first = next(records, None)
    folder = Path(args.folder)
    make_folder(folder)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"archive-{_file_name_part(args.type)}-{stamp}.chronicle"
    versions: dict[str, int] = {}
    with output(str(path)) as out:
        writer = Writer(out, BINARY)
        for record in itertools.chain([first] if first is not None else [], records):
            writer.write(record)
            if record.HasField("header"):
                versions = dict.fromkeys(record.header.aggregate_ids, 0)
            elif record.HasField("event"):
                versions[record.event.event.aggregate_id] = record.event.event.version
    if not versions:
        path.unlink()
        _print({"file": None, "archived": [], "changed": []})
        return EXIT_OK
    archived, changed = [], []
    for aggregate_id, version in versions.items():
        delete = admin_service_pb2.DeleteAggregateRequest(
            aggregate_id=aggregate_id,
            expected_version=version,
            reason=args.reason or f"archived to {path.name}",
            archive=path.name,
        )
        try:
            stub.DeleteAggregate(delete, timeout=args.timeout)
            archived.append(aggregate_id)
        except grpc.RpcError as error:
            if _error_info(error)[0] != "WRONG_EXPECTED_VERSION":
                raise
            changed.append(aggregate_id)  # a command came after the export: it stays, live
    _print({"file": str(path), "archived": archived, "changed": changed})
    return EXIT_OK


def _file_name_part(text: str) -> str:
    """``text`` as part of a file name that stays in its folder whatever the
    text: letters, digits, ``_``, ``-`` and inner dots kept, anything else
    ``_`` (an aggregate type's name is letters, digits, ``_`` and ``.``
    already; this holds even for one the server did not check)."""
    kept = "".join(char if char.isascii() and (char.isalnum() or char in "_-.") else "_" for char in text)
    return kept.strip(".") or "_"


def _restore(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """Import an archive's records of the chosen aggregates (all by
    default), replacing their tombstones. A chosen aggregate the archive
    does not hold is said, and nothing is restored (NOT_IN_ARCHIVE)."""
    from service.transfer.files import STDIO, Source
    from service.transfer.importer import ImportOptions
    from service.transfer.restoring import aggregates_in, only_aggregates

    chosen = set(args.aggregate or ())
    pool = RemoteTypes(channel).pool
    if chosen and args.file != STDIO:
        scan = Source(args.file, pool=pool)
        try:
            held = aggregates_in(scan.records())
        finally:
            scan.close()
        missing = sorted(chosen - held)
        if missing:
            listed = ", ".join(sorted(held)[:20]) + (", …" if len(held) > 20 else "") if held else "no aggregate"
            raise InvalidInput(
                f"{_listed(missing)} {'is' if len(missing) == 1 else 'are'} not in the archive {args.file} (it holds"
                f" {listed}): nothing was restored",
                reason="NOT_IN_ARCHIVE",
                metadata={"aggregate_ids": ",".join(missing), "file": args.file},
            )
    source = Source(args.file, pool=pool)
    try:
        options = ImportOptions(
            restore_deleted=True,
            even_if_read_models_behind=args.even_if_read_models_behind,
            read_models_wait=args.read_models_wait,
        )
        response = _send_import(channel, only_aggregates(source.records(), chosen), options)
    finally:
        source.close()
    counts = _import_counts(response)
    _warn_to_rebuild(counts)
    _print(counts)
    return EXIT_OK


def _listed(names: Sequence[str]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _load_callable(path: str) -> Callable[..., Any]:
    """``package.module:name``, which must be callable. The current folder
    is importable, as with ``python -m`` (the ``chronicle`` command's own
    folder is first on its path, not the one it runs in): a mapping written
    beside the command works as docs/migration.md shows it. Any failure is
    one line (MAPPING_NOT_LOADED, exit status 2), never a traceback."""
    import importlib
    import traceback

    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise _mapping_not_loaded(path, "give it as module:function, e.g. legacy_mapping:to_chronicle")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # none, or its module raised while imported: a syntax error, a failing import
        missing = error.name if isinstance(error, ModuleNotFoundError) else None
        if missing is not None and (missing == module_name or module_name.startswith(f"{missing}.")):
            raise _mapping_not_loaded(
                path,
                f"there is no module {missing!r} in the current folder ({here}) nor among the installed"
                " packages (a file legacy_mapping.py here is the module legacy_mapping)",
            ) from None
        where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        at = f" ({where.filename}, line {where.lineno})" if where is not None else ""
        if isinstance(error, SyntaxError) and error.filename:
            at = f" ({error.filename}, line {error.lineno})"
        raise _mapping_not_loaded(path, f"its module failed to load{at}: {_last_line(error)}") from None
    found = getattr(module, name, None)
    if found is None:
        raise _mapping_not_loaded(path, f"module {module_name!r} has no {name!r}")
    if not callable(found):
        raise _mapping_not_loaded(path, f"{name!r} in {module_name!r} is not a function")
    return found  # type: ignore[no-any-return]


def _mapping_not_loaded(path: str, why: str) -> InvalidInput:
    return InvalidInput(f"cannot load the mapping {path!r}: {why}", reason="MAPPING_NOT_LOADED")


def _last_line(error: BaseException) -> str:
    """An exception as the last line of its traceback says it."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _migrate(args: argparse.Namespace) -> int:
    """Bring the store's schema up to date and exit: what a server started
    with --migrate=never leaves to someone with the right to change the
    schema. Idempotent, and safe beside servers starting (they take the
    same lock)."""
    from service.store.factory import redacted_url

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # each migration applied
    version = asyncio.run(_migrate_store(args.database_url, force=args.force))
    _print({"database": redacted_url(args.database_url), "schema_version": version})
    return EXIT_OK


async def _migrate_store(url: str, *, force: bool = False) -> int | None:
    """The store at ``url`` migrated; its schema's version (None: a store
    without one). ``force``: also a migration that raises the compatibility
    floor under live replicas below it (MIGRATION_UNDER_OLD_REPLICAS)."""
    from service.store.factory import open_store

    adapter = open_store(url, pool_size=1, force_migration=force)
    await adapter.open()
    try:
        await adapter.ping()  # a PostgreSQL not reachable at open is migrated here, or says why not
        version: int | None = getattr(adapter, "schema_version", None)
        return version
    finally:
        await adapter.close()


def _masterkey(args: argparse.Namespace) -> int:
    from service.store.master_keys import new_entry

    print(new_entry(args.key_id, args.tenant or ""))
    return EXIT_OK


def _apikey(args: argparse.Namespace) -> int:
    from service.principal import tenant_problem
    from service.security.credentials import hash_api_key, new_api_key

    problem = tenant_problem(args.tenant) if args.tenant is not None else ""
    if problem:
        print(f"error: --tenant {problem}", file=sys.stderr)
        return EXIT_USAGE
    key = new_api_key()
    roles = ", ".join(json.dumps(r) for r in args.role or ())
    print(f"# the key (give it to {args.principal}; it is not stored anywhere): {key}", file=sys.stderr)
    entry = f'[[keys]]\nprincipal = {json.dumps(args.principal)}\nsha256 = "{hash_api_key(key)}"\nroles = [{roles}]'
    if args.tenant is not None:
        entry += f"\ntenant = {json.dumps(args.tenant)}"
    print(entry)
    return EXIT_OK


def _plugins(args: argparse.Namespace) -> int:
    from service.app import build_registry

    settings = load_settings(args, os.environ)
    registry = build_registry(settings)
    if args.check:
        return asyncio.run(_check_plugins(registry, settings.database_url))
    for plugin in registry.plugins:
        _print(
            {
                "plugin": plugin.name,
                "aggregates": [
                    {
                        "aggregate_type": aggregate.name,
                        "state": aggregate.state_type_name,
                        "state_schema_version": aggregate.state_schema_version,
                        "snapshot_every": aggregate.snapshot_every,
                        "commands": {name: spec.handler.__qualname__ for name, spec in aggregate.commands.items()},
                        # Who alone may send these: the reactions named, "*" any reaction.
                        "sent_by_reactions": {
                            name: sorted(spec.sent_by_reactions) or ["*"]
                            for name, spec in aggregate.commands.items()
                            if spec.sent_by_reactions is not None
                        },
                        "events": {
                            name: {"apply": spec.apply.__qualname__, "schema_version": spec.schema_version}
                            for name, spec in aggregate.events.items()
                        },
                        "upcasters": sorted(spec.name for spec in aggregate.upcasters.values()),
                    }
                    for aggregate in plugin.aggregates
                ],
                "projections": [
                    {
                        "projection": projection.name,
                        "aggregate_types": sorted(projection.aggregate_types),
                        "handlers": {name: handler.__qualname__ for name, (_, handler) in projection.handlers.items()},
                        "on_failure": projection.on_failure,
                    }
                    for projection in plugin.projections
                ],
                "reactions": [
                    {
                        "reaction": reaction.name,
                        "aggregate_types": sorted(reaction.aggregate_types),
                        "handlers": {name: handler.__qualname__ for name, (_, handler) in reaction.handlers.items()},
                        "on_refused": reaction.refused_handler.__qualname__ if reaction.refused_handler else None,
                        # Its @on_deadline functions, by deadline name.
                        "deadlines": {
                            name: handler.__qualname__ for name, handler in reaction.deadline_handlers.items()
                        },
                        "state": str(reaction.state_type.DESCRIPTOR.full_name) if reaction.state_type else None,
                    }
                    for reaction in plugin.reactions
                ],
                "middleware": [{"name": m.name, "class": type(m).__qualname__} for m in plugin.middleware],
            }
        )
    for warning in registry.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


async def _check_plugins(registry: Registry, url: str) -> int:
    """``plugins --check``: the store at ``url``, opened read only (as an
    export opens its source: nothing written, not even the schema's version),
    judged against ``registry``'s plugins (transfer/plugin_check.py). Exit 0
    when every kind of thing stored is readable, 1 with the report otherwise."""
    from service.store.factory import open_store
    from service.store.schema_use import SchemaUse
    from service.transfer.plugin_check import check_store

    adapter = open_store(url, pool_size=1, use=SchemaUse.READ_ONLY)
    await adapter.open()
    try:
        report = await check_store(registry, adapter)
    finally:
        await adapter.close()
    _print(report.as_json())
    return EXIT_OK if report.readable else EXIT_REFUSED


def _new_plugin(args: argparse.Namespace) -> int:

    from service.scaffold import new_plugin, next_steps

    written = new_plugin(args.name, into=Path(args.into), root=Path())
    print(next_steps(args.name, Path(args.into), written))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from service.app import bind_failed, serve
    from service.observability.logs import configure as configure_logging

    settings = load_settings(args, os.environ)
    # Said before gRPC's bind fails on it, which its core logs as a raw line
    # first. Not with a port shared on purpose (--reuse-port, --processes).
    if settings.processes == 1 and not settings.reuse_port and _address_in_use(settings.listen):
        raise bind_failed(settings.listen, os.strerror(errno.EADDRINUSE))
    configure_logging(level=settings.log_level, json_format=settings.log_format == "json")
    if settings.processes > 1:
        from service.processes import serve_processes

        return serve_processes(settings, sys.argv[1:])
    if args.master_keys is not None:  # the flag, not the environment variable
        logging.getLogger("chronicle").warning(
            "--master-keys on the command line is visible to every user of this machine (ps, /proc/PID/cmdline):"
            " give the keys in CHRONICLE_MASTER_KEYS or a --master-key-file instead"
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return EXIT_OK


def _address_in_use(listen: str) -> bool:
    """Whether another socket holds ``listen`` (an IP address and a port),
    found by binding sockets of our own there as gRPC's bind will (with
    SO_REUSEADDR, without SO_REUSEPORT; a wildcard address as both ``[::]``
    and ``0.0.0.0``, one of which gRPC needs), and closing them at once.
    A host name, port 0 or any other failure says False: gRPC's bind decides."""
    host, _, port = listen.rpartition(":")
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False  # a host name (resolved by gRPC), or no host at all
    if not port.isdigit() or int(port) == 0:
        return False
    if address.is_unspecified:
        tries = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        tries = [(socket.AF_INET6 if address.version == 6 else socket.AF_INET, str(address))]
    failures: list[int | None] = []
    for family, ip in tries:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and address.is_unspecified:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack, as gRPC's
                probe.bind((ip, int(port)))
        except OSError as error:
            failures.append(error.errno)
            continue
        return False  # gRPC can have it (if nothing takes it meanwhile)
    return errno.EADDRINUSE in failures


def _client_arguments(parser: argparse.ArgumentParser, *, local_by_default: bool = False) -> None:
    """The arguments of every command that talks to a server. With
    ``local_by_default`` (``health``), no --server means this host's server
    as its own settings describe it."""
    if local_by_default:
        parser.add_argument(
            "--server",
            type=_server_address,
            default=env_value(os.environ, "CHRONICLE_SERVER"),
            help="host:port of the server (env CHRONICLE_SERVER); default: this host's server as its settings "
            "say, for a container's health check: CHRONICLE_LISTEN (a wildcard address through loopback), TLS "
            "when CHRONICLE_TLS_CERT_FILE is set, trusting that certificate (or --tls-ca), a client certificate "
            "from --tls-cert/--tls-key when CHRONICLE_TLS_CLIENT_CA_FILE asks for one",
        )
    else:
        parser.add_argument(
            "--server",
            type=_server_address,
            default=(env_value(os.environ, "CHRONICLE_SERVER") or DEFAULT_SERVER),
            help=f"host:port of the server (env CHRONICLE_SERVER; default {DEFAULT_SERVER})",
        )
    parser.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for the server")
    parser.add_argument(
        "--token",
        default=env_value(os.environ, "CHRONICLE_TOKEN"),
        help="bearer token: a JWT or API key (env CHRONICLE_TOKEN)",
    )
    parser.add_argument(
        "--token-file",
        default=env_value(os.environ, "CHRONICLE_TOKEN_FILE"),
        help="file holding the bearer token, read again at every call: one an agent renews (env CHRONICLE_TOKEN_FILE)",
    )
    parser.add_argument(
        "--tls-ca",
        default=env_value(os.environ, "CHRONICLE_TLS_CA"),
        help="PEM CA of the server: use TLS (env CHRONICLE_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert", default=env_value(os.environ, "CHRONICLE_TLS_CERT"), help="client certificate (mTLS)"
    )
    parser.add_argument(
        "--tls-key", default=env_value(os.environ, "CHRONICLE_TLS_KEY"), help="client private key (mTLS)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = HintingParser(
        prog="chronicle",
        description="Chronicle: event-sourced command service",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chronicle {described_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    add_arguments(serve)
    serve.set_defaults(run=_serve, remote=False)

    plugins = commands.add_parser("plugins", help="list the plugins the server would load")
    add_arguments(plugins)
    plugins.add_argument(
        "--check",
        action="store_true",
        help="instead, check the plugins against what the store at --database-url holds (read only): exit 0 if"
        " they read all of it, 1 with a JSON report of what they cannot (run it before deploying new plugins)",
    )
    plugins.set_defaults(run=_plugins, remote=False)

    new = commands.add_parser("new-plugin", help="write a new domain plugin: proto, handlers, apply functions, tests")
    new.add_argument("name", help="lower_snake_case, e.g. library")
    new.add_argument(
        "--into", default="domain_plugins", help="folder of Python packages to put it in (default: %(default)s)"
    )
    new.set_defaults(run=_new_plugin, remote=False)

    submit = commands.add_parser("submit", help="submit one command")
    submit.add_argument("aggregate_id", type=_aggregate_id, help="the aggregate the command is for, e.g. acc-1")
    submit.add_argument("type", help="full command message name, e.g. bank.v1.Deposit")
    submit.add_argument("payload", nargs="?", default="{}", help="the command as a JSON object (default {})")
    submit.add_argument("--command-id", help="UUID; a new one if omitted (reuse one to retry safely)")
    submit.add_argument(
        "--expected-version",
        type=_count,
        help="refuse unless the aggregate is at this version (0: does not exist yet); WRONG_EXPECTED_VERSION",
    )
    submit.add_argument("--origin", help="where the command comes from, copied to its events (default: cli)")
    submit.add_argument(
        "--user",
        help="the user acting, copied to the events (default: the caller as authenticated; another user needs "
        "an impersonation grant)",
    )
    submit.add_argument(
        "--meta", action="append", type=_key_value, metavar="KEY=VALUE", help="metadata for the events; repeatable"
    )
    submit.add_argument("--dry-run", action="store_true", help="show the events it would append; write nothing")
    submit.set_defaults(run=_submit, remote=True)

    read = commands.add_parser("read", help="print an aggregate's events as JSON lines")
    read.add_argument("aggregate_id", type=_aggregate_id, help="the aggregate whose events to print")
    read.add_argument("--from-version", type=_count, help="first version (backwards: the newest); default all")
    read.add_argument("--limit", type=_count, default=0, help="at most this many events (a page)")
    read.add_argument("--backwards", action="store_true", help="newest first")
    read.add_argument("--type", action="append", help="only this event type; repeatable")
    read.add_argument("--origin", help="only events of commands from this origin")
    read.set_defaults(run=_read, remote=True)

    get = commands.add_parser("get", help="print an aggregate's state, now or in the past")
    get.add_argument("aggregate_id", type=_aggregate_id, help="the aggregate whose state to print")
    past = get.add_mutually_exclusive_group()
    past.add_argument("--at-version", type=_count, help="the state right after this version")
    past.add_argument("--at-time", type=_rfc3339, help="the state at this RFC 3339 time, e.g. 2026-01-31T12:00:00Z")
    get.set_defaults(run=_get, remote=True)

    health = commands.add_parser("health", help="check the server's health; exit 0 when serving")
    health.add_argument(
        "--service",
        default="",
        help="the service to ask about: the whole server (default, readiness: NOT_SERVING while the store is"
        " away), liveness (SERVING whenever the process answers: a liveness probe), chronicle.v1.CommandService,"
        " chronicle.v1.EventService, ...",
    )
    health.set_defaults(run=_health, remote=True)

    cluster = commands.add_parser(
        "cluster", help="the live members (address, version, schema version, partitions) and the topology's epoch"
    )
    cluster.set_defaults(run=_cluster, remote=True)

    audit = commands.add_parser("audit", help="print audit entries as JSON lines, newest first (admin)")
    audit.add_argument("--aggregate", type=_aggregate_id, help="only this aggregate id")
    audit.add_argument("--principal", help="only this principal")
    audit.add_argument("--command-id", help="only this command id")
    audit.add_argument(
        "--command-type",
        help="only this command type or administrator's action (bank.v1.Deposit,"
        " chronicle.v1.ProjectionService/RebuildProjection)",
    )
    audit.add_argument("--outcome", choices=("accepted", "refused"), help="only accepted, or only refused, commands")
    audit.add_argument("--since", type=_rfc3339, help="RFC 3339 time, e.g. 2026-01-01T00:00:00Z")
    audit.add_argument("--until", type=_rfc3339, help="RFC 3339 time")
    audit.add_argument("--limit", type=_count, default=100, help="at most this many entries (up to 1000)")
    audit.set_defaults(run=_audit, remote=True)

    apikey = commands.add_parser("apikey", help="make a new API key and print its entry for the API-key file")
    apikey.add_argument("principal", help="who the key authenticates as: the principal the policy grants roles to")
    apikey.add_argument("--role", action="append", help="a role for the key; repeatable")
    apikey.add_argument("--tenant", help="the principal's tenant, for tenant-scoped roles (docs/security.md#tenants)")
    apikey.set_defaults(run=_apikey, remote=False)

    forget = commands.add_parser(
        "forget",
        help="erase an aggregate's encryption key for good, or those of every aggregate under --prefix (admin)",
    )
    forget.add_argument(
        "aggregate_id", nargs="?", type=_stored_aggregate_id, help="the aggregate whose encryption key to erase"
    )
    forget.add_argument(
        "--prefix",
        help="every aggregate whose id starts with it (ending with a separator, 'acme:'): first says how many match",
    )
    forget.add_argument(
        "--confirm",
        type=_count,
        help="with --prefix: the number it said match (they are forgotten only if that many still do)",
    )
    forget.set_defaults(run=_forget, remote=True)

    aggregates = commands.add_parser(
        "aggregates", help="list aggregates by id prefix: type, version, deleted, has_key, forgotten (admin)"
    )
    aggregates.add_argument("--prefix", default="", help="only ids that start with it (literally)")
    aggregates.add_argument("--type", help="only aggregates of this type")
    aggregates.set_defaults(run=_aggregates, remote=True)

    rewrap = commands.add_parser(
        "rewrap-keys",
        help="rewrap data keys under their owner's active master key: its tenant's, or the shared (admin)",
    )
    rewrap.set_defaults(run=_rewrap_keys, remote=True)

    export = commands.add_parser(
        "export", help="write the store's contents to an export file (admin; docs/export-format.md)"
    )
    export.add_argument("file", nargs="?", default="-", help="where to write it (default -: standard output)")
    export.add_argument(
        "--format",
        choices=("binary", "jsonl"),
        help="binary (length-delimited Protobuf, exact: for moving stores) or jsonl (JSON lines, for reading);"
        " default: jsonl for a .jsonl file, else binary",
    )
    export.add_argument("--snapshots", action="store_true", help="include the aggregates' snapshots")
    export.add_argument(
        "--commands", action="store_true", help="include the command records (idempotency, the audit of commands)"
    )
    export.add_argument(
        "--aggregate", action="append", type=_aggregate_id, help="only this aggregate; repeatable (an archive)"
    )
    export.set_defaults(run=_export, remote=True)

    import_ = commands.add_parser("import", help="write an export file into the store (admin; resumable)")
    import_.add_argument("file", help="the export, binary or JSON lines (- reads standard input)")
    import_.add_argument(
        "--overwrite",
        action="store_true",
        help="replace aggregates the store holds other events for (their events, snapshots and claims);"
        " only for aggregates no server is using",
    )
    import_.add_argument(
        "--restore-deleted", action="store_true", help="replace only deleted aggregates' tombstones (a restore)"
    )
    import_.add_argument(
        "--even-if-read-models-behind",
        action="store_true",
        help="with --restore-deleted: restore even while projections are below a tombstone (READ_MODELS_BEHIND"
        " otherwise); rebuild the projections it names after",
    )
    _read_models_wait_option(import_)
    import_.add_argument(
        "--derive-per-tenant-claims",
        action="store_true",
        help="switch claims scopes to per tenant: leave out claim records global in a scope the plugins declare per"
        " tenant, and derive them from the aggregates' state in their tenant (docs/plugins.md, Unique per tenant)",
    )
    import_.add_argument(
        "--leave-out",
        action="append",
        type=_aggregate_id,
        metavar="AGGREGATE",
        help="import nothing of this aggregate (one the store has forgotten, say); repeatable; one the export"
        " holds no record of (a typo) is refused before anything is imported (NOT_IN_EXPORT)",
    )
    import_.add_argument(
        "--max-event-bytes",
        type=_positive,
        default=env_value(os.environ, "CHRONICLE_MAX_EVENT_BYTES"),
        help="with --database-url: refuse an event larger than this (default: the servers' --max-event-bytes,"
        " from CHRONICLE_MAX_EVENT_BYTES, else 1 MiB); through a server, the server's own limit applies",
    )
    import_.add_argument(
        "--master-key-file",
        default=env_value(os.environ, "CHRONICLE_MASTER_KEY_FILE"),
        help="with --database-url: the master keys of serve's --master-key-file (env CHRONICLE_MASTER_KEY_FILE, or"
        " CHRONICLE_MASTER_KEYS): what comes in the clear is sealed as a server with them seals it, and an export"
        " of a store encrypted at rest is taken only with the keys that open it (ENCRYPTED_EXPORT_WITHOUT_KEYS"
        " without any); through a server, the server's own keys apply",
    )
    import_.set_defaults(run=_import, remote=True)

    delete = commands.add_parser(
        "delete", help="delete an aggregate: its events go, its tombstone stays (admin; see archive)"
    )
    delete.add_argument("aggregate_id", type=_aggregate_id, help="the aggregate to delete")
    delete.add_argument("--expected-version", type=_count, help="only if the aggregate is at this version")
    delete.add_argument("--reason", help="why, kept in the tombstone and the audit log")
    delete.set_defaults(run=_delete, remote=True)

    archive = commands.add_parser(
        "archive",
        help="export the aggregates a rule picks to a file in FOLDER, then delete them (admin; restore brings"
        " one back)",
    )
    archive.add_argument("folder", help="where the archive file goes")
    archive.add_argument("--type", required=True, help="the aggregate type, e.g. Account")
    archive.add_argument(
        "--last-event", action="append", help="only aggregates whose last event is of this type (closed); repeatable"
    )
    untouched = archive.add_mutually_exclusive_group()
    untouched.add_argument(
        "--untouched-since", type=_rfc3339, help="only aggregates with no event since this RFC 3339 time"
    )
    untouched.add_argument("--untouched-for", help="only aggregates with no event for this long, e.g. 365d")
    archive.add_argument("--limit", type=_count, default=100, help="at most this many aggregates (up to 1000)")
    archive.add_argument("--reason", help="why, kept in each tombstone (default: the archive's file name)")
    archive.set_defaults(run=_archive, remote=True)

    restore = commands.add_parser("restore", help="bring archived aggregates back from an archive file (admin)")
    restore.add_argument("file", help="the archive file")
    restore.add_argument("--aggregate", action="append", type=_aggregate_id, help="only this one; repeatable")
    restore.add_argument(
        "--even-if-read-models-behind",
        action="store_true",
        help="restore even while projections are below an aggregate's tombstone (READ_MODELS_BEHIND otherwise);"
        " rebuild the projections it names after",
    )
    _read_models_wait_option(restore)
    restore.set_defaults(run=_restore, remote=True)

    convert = commands.add_parser(
        "convert-eventsourcing",
        help="write the events of a Python eventsourcing application's PostgreSQL table as an export"
        " (docs/migration.md; PostgreSQL only: the library's SQLite and other recorders are not read)",
    )
    convert.add_argument("file", help="the export to write (- for standard output)")
    convert.add_argument(
        "--from-url",
        required=True,
        help="the PostgreSQL the eventsourcing application uses (postgresql://...; not another database's URL)",
    )
    convert.add_argument("--table", required=True, help="its events table: <application name>_events, e.g. bank_events")
    convert.add_argument("--schema", default="public", help="the table's schema (POSTGRES_SCHEMA; default public)")
    convert.add_argument(
        "--mapping",
        required=True,
        help="module:function turning each of the library's events into a plugin's event (or None to leave it)",
    )
    convert.add_argument("--format", choices=("binary", "jsonl"), help="as for export")
    convert.add_argument("--quiet", action="store_true", help="no progress on standard error")
    convert.set_defaults(run=_convert_eventsourcing, remote=False)

    for sub in (export, import_):
        sub.add_argument(
            "--database-url",
            help="work straight on the store at this URL (the server may be stopped) instead of through --server",
        )
        sub.add_argument("--quiet", action="store_true", help="no progress on standard error")

    migrate = commands.add_parser(
        "migrate", help="bring the store's schema up to date and exit (for servers run with --migrate=never)"
    )
    # As serve's: the flag, else CHRONICLE_DATABASE_URL (a migration job run
    # with the servers' environment), required only when neither is given.
    from_environment = env_value(os.environ, "CHRONICLE_DATABASE_URL")
    migrate.add_argument(
        "--database-url",
        default=from_environment,
        required=from_environment is None,
        help="the store, as serve's --database-url (env CHRONICLE_DATABASE_URL)",
    )
    migrate.add_argument(
        "--force",
        action="store_true",
        help="apply a migration that raises the compatibility floor even while live replicas run below it",
    )
    migrate.set_defaults(run=_migrate, remote=False)

    masterkey = commands.add_parser(
        "masterkey", help="print a new master key entry 'ID:base64' ('TENANT:ID:base64' with --tenant)"
    )
    masterkey.add_argument("key_id", help="a name for the key, e.g. 2026-01")
    masterkey.add_argument(
        "--tenant", help="a key of this tenant's own: wraps its aggregates' keys, destroyed to shred the tenant"
    )
    masterkey.set_defaults(run=_masterkey, remote=False)

    projection = commands.add_parser(
        "projection",
        help="the projections, or one's progress or documents; rebuild it; list its parked events",
        description="no NAME: every projection's progress, one JSON line each; NAME: its progress;"
        " NAME KEY: one document; documents NAME: its documents as JSON lines"
        " (--prefix, --descending); parked NAME: the events it parked, as JSON lines; rebuild NAME: apply the"
        " log again from the start (admin), showing its progress and the time left; NAME --skip POSITION: park"
        " the event it is stopped on and go on (admin)",
    )
    projection.add_argument(
        "words",
        nargs="*",
        metavar="[NAME [KEY] | documents NAME | parked NAME | rebuild NAME]",
        help="e.g. bank.balances_by_owner owner:ann",
    )
    projection.add_argument("--prefix", default="", help="documents: only keys starting with this")
    projection.add_argument("--descending", action="store_true", help="documents: in descending key order")
    projection.add_argument(
        "--orphaned", action="store_true", help="with no NAME: also the stored projections no loaded plugin declares"
    )
    projection.add_argument("--no-wait", action="store_true", help="rebuild: return once the rebuild has started")
    projection.add_argument(
        "--skip",
        type=int,
        metavar="POSITION",
        help="NAME: park the event at POSITION, where the projection is stopped, and let it go on (admin;"
        " ask the replica that runs it)",
    )
    projection.set_defaults(run=_projection, remote=True)

    tail = commands.add_parser("tail", help="follow the global event stream as JSON lines")
    tail.add_argument(
        "--from",
        dest="start",
        default="end",
        help="'end' (default: only new events), 0 (the beginning) or a position to resume after",
    )
    tail.add_argument(
        "--after-event-id",
        metavar="ID",
        help="with --from POSITION: the id of the event seen at POSITION (an event's event_id, or a --checkpoints"
        " line's); a log that no longer holds it there (restored, failed over) is refused LOG_REWOUND, exit 1",
    )
    tail.add_argument("--type", action="append", help="only this event type; repeatable")
    tail.add_argument("--aggregate-type", action="append", help="only this aggregate type; repeatable")
    tail.add_argument("--aggregate", type=_aggregate_id, help="only this aggregate id")
    tail.add_argument("--origin", help="only events of commands from this origin")
    tail.add_argument(
        "--checkpoints",
        action="store_true",
        help="also print checkpoints (positions to resume after, with the event id to give --after-event-id)",
    )
    tail.add_argument("--until-caught-up", action="store_true", help="exit once the past has been printed")
    tail.set_defaults(run=_tail, remote=True)

    reaction = commands.add_parser(
        "reaction",
        help="reactions' progress, a reaction's parked commands (replay or dismiss them) and process states (admin)",
    )
    reaction.add_argument("name", nargs="?", help="e.g. bank.transfers (none: every reaction)")
    reaction.add_argument(
        "verb",
        nargs="?",
        choices=["reset"],
        help="reset --to POSITION|start|end: move its checkpoint; back, it handles the events after it again (admin)",
    )
    reaction.add_argument(
        "--to", type=_reset_to, metavar="POSITION|start|end", help="with reset: the new checkpoint (start: 0)"
    )
    reaction.add_argument(
        "--even-if-records-pruned",
        action="store_true",
        help="with reset: back past the server's --command-retention too (for a reaction that never sent the"
        " commands of those events: any it did, whose records were pruned, would be carried out again)",
    )
    chosen = reaction.add_mutually_exclusive_group()
    chosen.add_argument("--parked", action="store_true", help="list the reaction's parked commands")
    chosen.add_argument("--replay", metavar="COMMAND_ID", help="send a parked command again (admin)")
    chosen.add_argument("--dismiss", metavar="COMMAND_ID", help="forget a parked command without sending it (admin)")
    chosen.add_argument("--replay-all", action="store_true", help="send every parked command again (admin)")
    chosen.add_argument("--dismiss-all", action="store_true", help="forget every parked command (admin)")
    chosen.add_argument(
        "--drop-state",
        metavar="STATE_KEY",
        nargs="+",
        help="delete these processes' states (all or none), e.g. one it cannot load (admin)",
    )
    chosen.add_argument("--state", metavar="STATE_KEY", help="show one process's state, as JSON (admin, audited)")
    chosen.add_argument("--states", action="store_true", help="list the process states (admin, audited)")
    chosen.add_argument(
        "--drop-states",
        action="store_true",
        help="delete every state whose key starts with --prefix: first says how many, then --confirm COUNT (admin)",
    )
    reaction.add_argument(
        "--reason", default="", help="with --replay-all or --dismiss-all: only the commands refused with this reason"
    )
    reaction.add_argument("--prefix", help="with --states or --drop-states: only the states whose key starts so")
    reaction.add_argument(
        "--confirm",
        type=int,
        metavar="COUNT",
        help="with --drop-states: the number of states it said match (they are dropped only if that many still do)",
    )
    reaction.set_defaults(run=_reaction, remote=True)

    group = commands.add_parser(
        "group",
        help="subscription groups' state; a group's parked events; replay or dismiss them, change settings (admin)",
        description="no NAME: every group the caller may consume, as JSON lines (settings, position, log head, lag,"
        " acknowledged, parked, skipped, dismissed, consumers and their segments); NAME: that group; --parked: its"
        " parked events;"
        " --replay/--replay-all: deliver parked events again; --dismiss: delete parked events without delivering"
        " them (all named or none); --set KEY=VALUE...: change its settings (UpdateGroup)",
    )
    group.add_argument("name", nargs="?", help="e.g. billing (none: every group)")
    action = group.add_mutually_exclusive_group()
    action.add_argument("--parked", action="store_true", help="list the group's parked events, by position")
    action.add_argument("--replay", metavar="EVENT_ID", nargs="+", help="deliver these parked events again (admin)")
    action.add_argument("--replay-all", action="store_true", help="deliver every parked event again (admin)")
    action.add_argument(
        "--dismiss",
        metavar="EVENT_ID",
        nargs="+",
        help="delete these parked events without delivering them again; all or none (admin)",
    )
    action.add_argument(
        "--set",
        metavar="KEY=VALUE",
        nargs="+",
        type=_group_setting,
        help="change settings while the group is consumed, keeping its position and parked events (admin):"
        " max_delivery_attempts=N, max_unanswered_timeouts=N (0: never), retry_backoff=, max_retry_backoff=,"
        " ack_timeout= (500ms, 30s, 2m, 1h)",
    )
    group.set_defaults(run=_group, remote=True)
    group_verbs = _group_verb_parsers(commands)

    for remote_command in (
        *group_verbs,
        submit,
        cluster,
        group,
        read,
        get,
        audit,
        forget,
        rewrap,
        aggregates,
        tail,
        projection,
        reaction,
        export,
        import_,
        delete,
        archive,
        restore,
    ):
        _client_arguments(remote_command)
    _client_arguments(health, local_by_default=True)
    for sub in commands.choices.values():
        sub.epilog, sub.formatter_class = EXIT_STATUS_HELP, argparse.RawDescriptionHelpFormatter
    return parser


def _read_file(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise InvalidInput(
            f"cannot read {path}: {(error.strerror or str(error)).lower()}",
            reason="FILE_NOT_READABLE",
            metadata={"file": path},
        ) from None


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Sends ``authorization: Bearer <token>`` with every call, reflection
    included; ``token()`` is asked at each call (a token file read again)."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: object) -> object:
        entry = ("authorization", f"Bearer {self._token()}")
        return details._replace(metadata=(*(getattr(details, "metadata", None) or ()), entry))  # type: ignore[attr-defined]

    def intercept_unary_unary(self, continuation: object, details: object, request: object) -> object:
        return continuation(self._details(details), request)  # type: ignore[operator]

    def intercept_unary_stream(self, continuation: object, details: object, request: object) -> object:
        return continuation(self._details(details), request)  # type: ignore[operator]

    def intercept_stream_unary(self, continuation: object, details: object, requests: object) -> object:
        # ImportLog (chronicle import --server, chronicle restore) streams its requests.
        return continuation(self._details(details), requests)  # type: ignore[operator]

    def intercept_stream_stream(self, continuation: object, details: object, requests: object) -> object:
        return continuation(self._details(details), requests)  # type: ignore[operator]


def _local_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to this host's server, found from the server's own settings
    in the environment (``chronicle health`` as a container's health check)."""
    from service.local_server import local_server

    settings = load_settings(None, os.environ)
    local = local_server(
        listen=settings.listen, tls_cert_file=settings.tls_cert_file, trusted_ca_file=args.tls_ca or ""
    )
    if not local.tls:
        return grpc.insecure_channel(local.address)
    if settings.tls_client_ca_file and not (args.tls_cert and args.tls_key):
        raise ValueError(
            "the server asks for a client certificate (CHRONICLE_TLS_CLIENT_CA_FILE): give one with "
            "--tls-cert and --tls-key (CHRONICLE_TLS_CERT, CHRONICLE_TLS_KEY)"
        )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=local.root_certificates,
        private_key=_read_file(args.tls_key),
        certificate_chain=_read_file(args.tls_cert),
    )
    # The certificate names the server as clients know it; here it is reached through loopback.
    options = [("grpc.ssl_target_name_override", local.server_name)] if local.server_name else []
    return grpc.secure_channel(local.address, credentials, options=options)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.server is None:
        channel = _local_channel(args)
    elif args.tls_ca or args.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_file(args.tls_ca),
            private_key=_read_file(args.tls_key),
            certificate_chain=_read_file(args.tls_cert),
        )
        channel = grpc.secure_channel(args.server, credentials)
    else:
        channel = grpc.insecure_channel(args.server)
    if args.token and args.token_file:
        raise ValueError("give the bearer token with --token or --token-file, not both")
    if args.token_file:
        path = Path(args.token_file)
        return grpc.intercept_channel(channel, _BearerToken(lambda: _token_in(path)))
    if args.token:
        token: str = args.token
        return grpc.intercept_channel(channel, _BearerToken(lambda: token))
    return channel


def _token_in(path: Path) -> str:
    """The token in ``path`` now. Read a second time, 50 ms on, when it
    reads empty: an agent that rewrites the file in place (not by renaming
    a new one over it) leaves it empty for a moment."""
    for attempt in (1, 2):
        try:
            token: str = path.read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read the token file {path}: {error.strerror}") from None
        if token:
            return token
        if attempt == 1:
            time.sleep(0.05)
    raise ValueError(f"the token file {path} is empty")


def _stdout_closed() -> int:
    """The reader of our output left early (``chronicle read … | head``):
    end quietly, as Unix tools do (they die of SIGPIPE, which a shell reports
    as 128 + 13). Standard output now goes nowhere, so that the interpreter's
    last flush of what is still buffered does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_STDOUT_CLOSED


def run() -> NoReturn:
    """The ``chronicle`` command (``python -m service`` too): ``main`` with
    this process's arguments, then its exit.

    A command that talked to a server ends without the interpreter's
    finalization, once what it wrote is flushed. gRPC's client threads are
    daemons; one frozen by finalization while it holds a lock that an
    object's finalizer then waits for keeps the process alive after it has
    said everything (seen once in CI: a ``submit`` that had printed its
    refusal did not exit in 30 s). Such a command has closed its channel
    and its files by then (each in a ``with``): nothing is left for
    finalization to do. ``serve`` and the offline commands end the ordinary
    way, their ``atexit`` work (a tracer's last spans) included."""
    parsed: list[argparse.Namespace] = []
    status = _run_command(None, parsed)
    if parsed and parsed[0].remote:
        _exit_at_once(status)
    sys.exit(status)


def _exit_at_once(status: int) -> NoReturn:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left (`| head`), or the stream is closed
            status = status or EXIT_STDOUT_CLOSED
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line ``argv`` (this process's when None) run to its exit
    status, for callers in this process (tests, scripts)."""
    return _run_command(argv, [])


def _run_command(argv: Sequence[str] | None, parsed: list[argparse.Namespace]) -> int:
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(_with_group_verb(sys.argv[1:] if argv is None else argv))
        parsed.append(args)
        if not args.remote:
            return int(args.run(args))
        with _channel(args) as channel:
            return int(args.run(args, channel))
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except grpc.RpcError as error:
        return _report_rpc_error(error, args)
    except ChronicleError as error:
        # The reason first, as for a refused RPC: what a script can match on.
        print(f"error: {error.reason}: {error.message}", file=sys.stderr)
        if isinstance(error, InvalidInput | ConfigurationError):
            return EXIT_USAGE  # the command line, a setting or the input (a malformed file) is wrong
        # A store that refused what it was given (an import on it, say) has
        # refused, as a server would: said the same way.
        if error.metadata:
            print(f"  {json.dumps(error.metadata, sort_keys=True)}", file=sys.stderr)
        return EXIT_REFUSED
    except (UnknownType, json_format.ParseError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, _UsageError):
            print(error.hint, file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        # A file that failed midway (a full disk, a folder that went away):
        # the files a command names are checked as they are opened (above).
        name = errno.errorcode.get(error.errno or 0, "OS_ERROR")
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {name}: {(error.strerror or str(error)).lower()}{where}", file=sys.stderr)
        return EXIT_REFUSED
