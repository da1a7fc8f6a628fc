"""Bad input for every RPC of every chronicle.v1 service, against a real
server process on PostgreSQL (with encryption at rest on, so that every
path is reachable): random bytes, valid requests cut short or corrupted,
invalid UTF-8, hostile values in well-formed requests, deadlines of zero.

Each answer is a clear status: never UNKNOWN or INTERNAL, and every refusal
carries a google.rpc.ErrorInfo reason. A refused command writes nothing
(at most the record of its refusal), the server keeps serving, and its
memory stays bounded.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import psycopg
import pytest
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronicle.v1 import command_service_pb2, command_service_pb2_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import build_registry
from service.settings import Settings
from service.store.encryption import new_master_key
from tests.support.fuzzing import Answer, Rpc, Values, call, chronicle_rpcs, corrupted, with_invalid_utf8
from tests.support.grpc_client import command
from tests.support.postgres import Cluster
from tests.support.processes import Replica
from tests.support.security import write

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RPCS = chronicle_rpcs()
REGISTRY = build_registry(Settings())
SEEDED = ["acc-seed", "acc-seed-2"]  # the fuzz may use (and forget) these
CANARY = "acc-canary"  # and never this one
EXAMPLES = int(os.environ.get("CHRONICLE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
# Refusals a client can act on. UNKNOWN, INTERNAL and DATA_LOSS are not:
# they say the server, not the request, is at fault.
CLEAR = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
}


@dataclass
class Ledger:
    """What the fuzzed server answered to commands: the ground truth for
    "a refused command wrote nothing"."""

    accepted: dict[str, int] = field(default_factory=dict)  # command id -> events it appended
    refused: set[str] = field(default_factory=set)

    def note(self, rpc: Rpc, data: bytes, answer: Answer) -> None:
        ids = _command_ids(rpc, data)
        if answer.code != grpc.StatusCode.OK:
            self.refused.update(ids)
        elif rpc.name == "Submit":
            self._accept(ids, [command_service_pb2.SubmitResponse.FromString(answer.responses[0])])
        elif rpc.name == "SubmitBatch":
            self._accept(ids, list(command_service_pb2.SubmitBatchResponse.FromString(answer.responses[0]).results))
        elif rpc.name == "SubmitStream" and answer.responses:
            result = command_service_pb2.SubmitStreamResponse.FromString(answer.responses[0])
            if result.HasField("ok"):
                self._accept(ids, [result.ok])
            else:
                self.refused.update(ids)

    def _accept(self, ids: list[str], responses: list[command_service_pb2.SubmitResponse]) -> None:
        for command_id, response in zip(ids, responses, strict=False):
            if not response.replayed:  # a dry run's events have no position: not appended
                self.accepted[command_id] = len([e for e in response.events if e.position])


def _command_ids(rpc: Rpc, data: bytes) -> list[str]:
    """The command ids of a Submit or SubmitBatch as the server reads them."""
    try:
        if rpc.name in ("Submit", "SubmitStream"):
            commands = [command_service_pb2.SubmitRequest.FromString(data).command]
        elif rpc.name == "SubmitBatch":
            commands = list(command_service_pb2.SubmitBatchRequest.FromString(data).commands)
        else:
            return []
    except DecodeError:
        return []
    ids = []
    for sent in commands:
        with contextlib.suppress(ValueError):
            ids.append(str(uuid.UUID(sent.command_id)))  # the server's normal form
    return ids


@dataclass
class Fuzzed:
    server: Replica
    channel: grpc.Channel
    database_url: str
    ledger: Ledger


@pytest.fixture(scope="module")
def fuzzed(pg_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    url = pg_cluster.create_database()
    root = tmp_path_factory.mktemp("fuzz")
    keys = write(root / "master.keys", f"k1:{new_master_key()}\n")
    server = Replica(url, log_path=root / "server.log", extra=["--master-key-file", keys])
    try:
        server.start()
        with grpc.insecure_channel(server.address) as channel:
            stub = command_service_pb2_grpc.CommandServiceStub(channel)
            for account in [*SEEDED, CANARY]:
                stub.Submit(command_service_pb2.SubmitRequest(command=command(account, bank.OpenAccount(owner="o"))))
                stub.Submit(command_service_pb2.SubmitRequest(command=command(account, bank.Deposit(amount=5))))
            yield Fuzzed(server, channel, url, Ledger())
    finally:
        server.close()
        pg_cluster.drop_database(url)


def send(fuzzed: Fuzzed, rpc: Rpc, data: bytes) -> Answer:
    answer = call(fuzzed.channel, rpc, data)
    fuzzed.ledger.note(rpc, data, answer)
    assert answer.code == grpc.StatusCode.OK or answer.code in CLEAR, (
        f"{rpc.path} answered {answer.code.name} ({answer.reason}) to {data[:200]!r}"
    )
    if answer.code != grpc.StatusCode.OK:
        assert answer.reason, f"{rpc.path} refused {data[:200]!r} with {answer.code.name} but no ErrorInfo reason"
    if rpc.name == "SubmitStream" and answer.responses:  # a refusal inside the stream's answer
        result = command_service_pb2.SubmitStreamResponse.FromString(answer.responses[0])
        if result.HasField("error"):
            code = next(c for c in grpc.StatusCode if c.value[0] == result.error.code)
            assert code in CLEAR and result.error.reason, f"{rpc.path} answered {result.error} to {data[:200]!r}"
    return answer


def still_serving(fuzzed: Fuzzed) -> None:
    """The process is up, health says SERVING and a good command is accepted."""
    assert fuzzed.server.running, fuzzed.server.log_tail()
    health = health_pb2_grpc.HealthStub(fuzzed.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    good = command(CANARY, bank.Deposit(amount=1))
    stub = command_service_pb2_grpc.CommandServiceStub(fuzzed.channel)
    response = stub.Submit(command_service_pb2.SubmitRequest(command=good), timeout=10)
    fuzzed.ledger.accepted[good.command_id] = len(response.events)


VALUES = Values(REGISTRY, SEEDED)
ids = [rpc.path.lstrip("/").replace("chronicle.v1.", "") for rpc in RPCS]


@pytest.mark.parametrize("rpc", RPCS, ids=ids)
def test_random_bytes_get_a_clear_status(fuzzed: Fuzzed, rpc: Rpc) -> None:
    @FUZZ
    @given(st.binary(max_size=512))
    def random_bytes(data: bytes) -> None:
        send(fuzzed, rpc, data)

    random_bytes()
    still_serving(fuzzed)


@pytest.mark.parametrize("rpc", RPCS, ids=ids)
def test_requests_that_do_not_parse_are_invalid_argument_with_a_reason(fuzzed: Fuzzed, rpc: Rpc) -> None:
    @FUZZ
    @given(VALUES.messages(rpc.input), st.data())
    def broken(message: object, data: st.DataObject) -> None:
        valid = message.SerializeToString()  # type: ignore[attr-defined]
        sent = (
            with_invalid_utf8(rpc.input, valid, data.draw) if data.draw(st.booleans()) else corrupted(valid, data.draw)
        )
        answer = send(fuzzed, rpc, sent)
        if _does_not_parse(rpc, sent):
            assert (answer.code, answer.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")

    broken()
    still_serving(fuzzed)


@pytest.mark.parametrize("rpc", RPCS, ids=ids)
def test_hostile_values_in_well_formed_requests_get_a_clear_status(fuzzed: Fuzzed, rpc: Rpc) -> None:
    @FUZZ
    @given(VALUES.messages(rpc.input))
    def hostile(message: object) -> None:
        send(fuzzed, rpc, message.SerializeToString())  # type: ignore[attr-defined]

    hostile()
    still_serving(fuzzed)


def _does_not_parse(rpc: Rpc, data: bytes) -> bool:
    try:
        message_factory.GetMessageClass(rpc.input).FromString(data)
    except DecodeError:
        return True
    return False


@pytest.mark.parametrize("timeout", [0.0, 1e-6, 1e-3])
def test_deadlines_of_zero_leave_the_server_serving_and_the_command_once_at_most(
    fuzzed: Fuzzed, timeout: float
) -> None:
    submit = next(rpc for rpc in RPCS if rpc.name == "Submit")
    sent = command(CANARY, bank.Deposit(amount=2))
    for rpc in RPCS:
        request = command_service_pb2.SubmitRequest(command=sent) if rpc is submit else b""
        data = request if isinstance(request, bytes) else request.SerializeToString()
        answer = call(fuzzed.channel, rpc, data, timeout=timeout)
        assert answer.code in {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK} | CLEAR, answer
    # Whether the command ran or not, sending it again settles it, once.
    stub = command_service_pb2_grpc.CommandServiceStub(fuzzed.channel)
    response = stub.Submit(command_service_pb2.SubmitRequest(command=sent), timeout=10)
    first = command_service_pb2.SubmitResponse()
    first.CopyFrom(response)
    assert stub.Submit(command_service_pb2.SubmitRequest(command=sent), timeout=10).events == first.events
    fuzzed.ledger.accepted[sent.command_id] = len(first.events)
    still_serving(fuzzed)


def test_a_request_over_the_size_limit_is_resource_exhausted(fuzzed: Fuzzed) -> None:
    submit = next(rpc for rpc in RPCS if rpc.name == "Submit")
    answer = call(fuzzed.channel, submit, b"\x0a" + b"\xff" * (5 * 1024 * 1024))
    assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(fuzzed)


def test_memory_stays_bounded_under_bad_input(fuzzed: Fuzzed) -> None:
    """The same bad traffic twice: the second round, after the first warmed
    every cache and pool, must not grow the server much (a leak per request
    would show as megabytes here). Generous bounds, no timing."""
    import random

    rng = random.Random(5)

    def round_of_bad_input() -> None:
        for _ in range(1500):
            rpc = rng.choice(RPCS)
            size = rng.choice([0, 8, 64, 1024, 64 * 1024])
            call(fuzzed.channel, rpc, rng.randbytes(size))
        submit = next(rpc for rpc in RPCS if rpc.name == "Submit")
        for _ in range(10):  # near the size limit, and over it
            call(fuzzed.channel, submit, b"\x0a" + b"\xff" * (4 * 1024 * 1024 - 64))
            call(fuzzed.channel, submit, b"\x0a" + b"\xff" * (5 * 1024 * 1024))

    round_of_bad_input()
    before = fuzzed.server.footprint()
    round_of_bad_input()
    after = fuzzed.server.footprint()
    print(f"server footprint before {before}, after {after}")
    assert after.rss_bytes - before.rss_bytes < 32 * 1024 * 1024, (before, after)
    assert after.open_fds <= before.open_fds + 8, (before, after)
    still_serving(fuzzed)


# Last in the module: it checks what every test above left in the store.
def test_refused_commands_wrote_nothing(fuzzed: Fuzzed) -> None:
    """After everything above: the store holds exactly the accepted commands'
    events, and a refused command at most the record of its refusal."""
    with psycopg.connect(fuzzed.database_url) as conn:
        events: dict[str, int] = dict(
            conn.execute("SELECT command_id, count(*) FROM chronicle.events GROUP BY command_id").fetchall()
        )
        accepted = {
            r[0] for r in conn.execute("SELECT command_id FROM chronicle.commands WHERE rejection IS NULL").fetchall()
        }
    ledger = fuzzed.ledger
    print(f"fuzz commands: {len(ledger.accepted)} accepted, {len(ledger.refused)} refused")
    assert ledger.refused, "the fuzz should have sent commands to refuse"
    assert not ledger.refused & set(events), "refused commands appended events"
    assert not ledger.refused & accepted, "refused commands are recorded as accepted"
    seeded = set(events) - set(ledger.accepted)
    assert len(seeded) == 2 * (len(SEEDED) + 1), "events of commands no client saw accepted"
    for command_id, count in ledger.accepted.items():
        assert events.get(command_id, 0) == count, f"{command_id}: {events.get(command_id, 0)} events, told {count}"
