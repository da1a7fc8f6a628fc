"""Commands per second per principal (docs/security.md, "Quotas"), over a
real socket with --auth and the Python client. The server's rate limits
run on a clock the test moves (``RateLimits.clock`` and ``.sleep``): what
is asserted is the buckets' accounting, never how long anything took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.rate_limits import RateLimits
from service.client import NO_RETRIES, ChronicleClient, Command, RemoteError
from service.client.retry import RetryPolicy
from service.principal import Principal
from service.store.memory import MemoryStore
from tests.integration.test_security_claims import replace_file
from tests.support.grpc_client import command, connect, details_of
from tests.support.reloading import Served, reloading_server
from tests.support.security import bearer
from tests.support.waiting import eventually

ACME_KEY = "chr_acme-rate-limit-test-key-0123456789abcdef01234567"
GLOBEX_KEY = "chr_globex-rate-limit-test-key-0123456789abcdef012345"
ROOT_KEY = "chr_root-rate-limit-test-key-0123456789abcdef01234567"
TENANT = """
[roles.tenant]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit"]
read = ["Account"]
{rate}

[roles.operator]
submit = ["*"]
read = ["*"]
admin = true
commands_per_second = 1   # an administrator is exempt all the same

[principals."acme"]
roles = ["tenant"]

[principals."globex"]
roles = ["tenant"]

[principals."root"]
roles = ["operator"]
"""
TEN_A_SECOND = "commands_per_second = 10\nburst = 20"


class Clock:
    """The rate limits' time: moves only by what a stream sleeps (and
    ``advance``). ``on_sleep`` sees each sleep before the clock moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.on_sleep: Callable[[float], Awaitable[None]] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            await self.on_sleep(seconds)
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def served(tmp_path: Path, store: MemoryStore) -> AsyncIterator[Served]:
    keys: list[tuple[str, str, list[str]]] = [
        (ACME_KEY, "acme", []),
        (GLOBEX_KEY, "globex", []),
        (ROOT_KEY, "root", []),
    ]
    policy = TENANT.format(rate=TEN_A_SECOND)
    async with reloading_server(tmp_path, keys=keys, policy=policy, store=store) as server:
        yield server


def clocked(served: Served) -> tuple[RateLimits, Clock]:
    rate_limits = served.app.rate_limits
    assert rate_limits is not None
    clock = Clock()
    rate_limits.clock, rate_limits.sleep = clock, clock.sleep
    return rate_limits, clock


def client(served: Served, key: str, retry: RetryPolicy = NO_RETRIES) -> ChronicleClient:
    return ChronicleClient.connect(served.app.address, token=key, retry=retry)


def opening(aggregate_id: str, deposits: int = 0) -> list[Command]:
    return [
        Command(aggregate_id, bank.OpenAccount(owner="ann")),
        *(Command(aggregate_id, bank.Deposit(amount=1)) for _ in range(deposits)),
    ]


async def refused(call: Awaitable[object]) -> RemoteError:
    with pytest.raises(RemoteError) as raised:
        await call
    return raised.value


async def test_unary_calls_over_the_rate_are_refused_with_the_delay_and_nothing_applied(
    served: Served, store: MemoryStore
) -> None:
    _, clock = clocked(served)
    async with client(served, ACME_KEY) as acme, client(served, GLOBEX_KEY) as globex:
        await acme.submit_batch(opening("acme-1", deposits=19))  # the burst: 20 commands, counted per command
        one = await refused(acme.submit("acme-2", bank.OpenAccount(owner="ann")))
        batch = await refused(acme.submit_batch(opening("acme-3", deposits=4)))
        # Another principal's bucket is its own: globex is let in at the same instant.
        await globex.submit_batch(opening("globex-1", deposits=19))
        clock.now += 0.5  # five tokens back: the batch of five now passes, whole
        await acme.submit_batch(opening("acme-3", deposits=4))
        heads = [await store.head(name) for name in ("acme-1", "acme-2", "acme-3", "globex-1")]
    assert (one.code.name, one.reason, one.retry_delay) == ("RESOURCE_EXHAUSTED", "PRINCIPAL_RATE_LIMITED", 0.1)
    assert one.metadata == {"commands_per_second": "10", "burst": "20"}
    assert (batch.reason, batch.retry_delay) == ("PRINCIPAL_RATE_LIMITED", 0.5)  # five tokens: half a second
    # The refused batch wrote nothing until it passed, whole.
    assert [head and head.version for head in heads] == [20, None, 5, 20]
    audited = await audit(served, "acme")
    assert audited.count(("bank.v1.OpenAccount", "PRINCIPAL_RATE_LIMITED")) == 2  # acme-2, acme-3's first
    assert audited.count(("bank.v1.Deposit", "PRINCIPAL_RATE_LIMITED")) == 4  # one entry per command, as others


async def audit(served: Served, principal: str) -> list[tuple[str, str]]:
    async with connect(served.app.address, interceptors=bearer(ROOT_KEY)) as root:
        response = await root.admin.QueryAudit(admin.QueryAuditRequest(principal=principal))
    return [(e.command_type, e.reason) for e in response.entries if e.reason]


async def test_a_stream_over_the_rate_is_slowed_not_refused(served: Served, store: MemoryStore) -> None:
    rate_limits, clock = clocked(served)
    started = clock.now
    seen: list[tuple[float, int]] = []

    async def looking(seconds: float) -> None:  # before each wait: what the server has run by then
        seen.append((clock.now - started, await store.log_head()))

    clock.on_sleep = looking
    pages = [
        cs.SubmitPage(
            requests=[
                cs.SubmitRequest(command=command(f"acme-{page}-{n}", bank.OpenAccount(owner="ann"), user_id=""))
                for n in range(10)
            ]
        )
        for page in range(10)
    ]
    async with connect(served.app.address, interceptors=bearer(ACME_KEY)) as acme:
        answers = [result async for page in acme.commands.SubmitStreamPages(iter(pages)) for result in page.results]
    assert [answer.WhichOneof("result") for answer in answers] == ["ok"] * 100  # every command accepted
    # Pages of ten: the first two took the burst (20); each of the other
    # eight waited a second of the limits' clock for its ten tokens before
    # the server started it, so the server never ran more than the tokens
    # allowed by then.
    assert clock.slept == pytest.approx([1.0] * 8)
    assert [head for _, head in seen] == [20, 30, 40, 50, 60, 70, 80, 90]
    assert [elapsed for elapsed, _ in seen] == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7])
    bucket = rate_limits.bucket(Principal("acme", "api-key"))
    assert bucket is not None
    assert bucket.reserve(0, clock.now) == 0.0
    assert bucket.tokens == pytest.approx(0.0)  # every token spent, none owed


async def test_another_principal_is_served_while_a_stream_waits(served: Served) -> None:
    _, clock = clocked(served)
    waiting, go_on = asyncio.Event(), asyncio.Event()

    async def held(seconds: float) -> None:
        waiting.set()
        await go_on.wait()

    clock.on_sleep = held
    async with client(served, ACME_KEY) as acme, client(served, GLOBEX_KEY) as globex:

        async def flood() -> int:
            commands = (opening(f"acme-{n}")[0] for n in range(40))
            return len([result async for result in acme.submit_stream(commands) if result.error is None])

        flooding = asyncio.ensure_future(flood())
        await asyncio.wait_for(waiting.wait(), 20)  # noqa: RUF100  # acme's stream is over its rate, and waits
        accepted = await globex.submit("globex-1", bank.OpenAccount(owner="gus"))
        over = await refused(acme.submit("acme-unary", bank.OpenAccount(owner="ann")))  # acme's own are not
        go_on.set()
        assert await asyncio.wait_for(flooding, 20) == 40
    assert accepted.version == 1
    assert over.reason == "PRINCIPAL_RATE_LIMITED"


async def test_a_reloaded_policy_changes_the_limit(served: Served) -> None:
    _, clock = clocked(served)
    async with client(served, ACME_KEY) as acme, client(served, ROOT_KEY) as root:
        await acme.submit_batch(opening("acme-1", deposits=19))
        assert (await refused(acme.submit("acme-2", bank.OpenAccount(owner="ann")))).reason == (
            "PRINCIPAL_RATE_LIMITED"
        )
        for n in range(50):  # root is an administrator: no limit
            await root.submit(f"root-{n}", bank.OpenAccount(owner="root"))
        replace_file(served.policy, TENANT.format(rate="commands_per_second = 0"))  # the limit lifted

        async def let_in() -> bool:
            try:
                await acme.submit(f"acme-{clock.now}", bank.OpenAccount(owner="ann"))
            except RemoteError as error:
                clock.now += 0.001  # a new command id each try
                return error.reason != "PRINCIPAL_RATE_LIMITED"  # an unexpected refusal ends the wait
            return True

        await eventually_true(let_in)
        for n in range(100):
            await acme.submit(f"acme-after-{n}", bank.OpenAccount(owner="ann"))
        replace_file(served.policy, TENANT.format(rate="commands_per_second = 1\nburst = 1"))  # and set low

        async def held_back() -> bool:
            try:
                await acme.submit(f"acme-low-{clock.now}", bank.OpenAccount(owner="ann"))
            except RemoteError as error:
                return error.reason == "PRINCIPAL_RATE_LIMITED" and error.retry_delay == 1.0
            return False

        await eventually_true(held_back)


async def eventually_true(check: Callable[[], Awaitable[bool]]) -> None:
    """Until ``check`` is true: a reload is noticed within 50 ms."""
    await eventually(check, what="the reloaded policy in force")


async def test_a_stream_that_cannot_wait_within_its_deadline_ends_with_its_started_commands_answered(
    served: Served, store: MemoryStore
) -> None:
    clocked(served)

    def page(prefix: str, count: int) -> cs.SubmitPage:
        return cs.SubmitPage(
            requests=[
                cs.SubmitRequest(command=command(f"{prefix}-{n}", bank.OpenAccount(owner="ann"), user_id=""))
                for n in range(count)
            ]
        )

    answers: list[str | None] = []

    async def read_all(call: Any) -> None:
        async for answered in call:
            answers.extend(answer.WhichOneof("result") for answer in answered.results)

    async with connect(served.app.address, interceptors=bearer(ACME_KEY)) as acme:
        # The burst, then 100 more: ten seconds of tokens, and the call's
        # deadline five seconds away (the wait is weighed against the call's
        # time left; the limits' clock never moves here).
        call = acme.commands.SubmitStreamPages(iter([page("first", 20), page("second", 100)]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_all(call)
    details = details_of(ended.value)
    assert (details.code, details.reason, details.retry) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PRINCIPAL_RATE_LIMITED",
        True,
    )
    assert answers == ["ok"] * 20  # every command it started was answered before the stream ended
    assert await store.log_head() == 20  # and none of the page it could not start ran


async def test_a_submit_stream_waits_per_command(served: Served, store: MemoryStore) -> None:
    _, clock = clocked(served)
    requests = [
        cs.SubmitRequest(command=command(f"acme-{n}", bank.OpenAccount(owner="ann"), user_id="")) for n in range(30)
    ]
    async with connect(served.app.address, interceptors=bearer(ACME_KEY)) as acme:
        answers = [answer async for answer in acme.commands.SubmitStream(iter(requests))]
    assert [answer.WhichOneof("result") for answer in answers] == ["ok"] * 30
    assert clock.slept == pytest.approx([0.1] * 10)  # the burst (20), then a tenth of a second per command
    assert await store.log_head() == 30
