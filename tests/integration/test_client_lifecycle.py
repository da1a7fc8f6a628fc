"""The Python client's lifecycle against a real server process: a client
made where no loop runs binds to the loop of its first call; a call from
another loop, or after ``close()``, is refused with a typed error that says
what to do, before anything is sent (docs/clients.md, "One client per event
loop"); a call's ``timeout=`` ends in a ``DeadlineExceeded`` carrying the
command id, which sent again runs the command once."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import (
    ChronicleClient,
    ClientClosed,
    ClientUsageError,
    Command,
    DeadlineExceeded,
    RetryPolicy,
    WrongEventLoop,
)
from service.errors import ChronicleError
from tests.support.processes import free_port, server_process

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("lifecycle") / "events.db"
    with server_process(f"sqlite:///{path}") as server:
        yield server.address


def new_id() -> str:
    return f"acc-{uuid.uuid4().hex[:8]}"


def test_a_client_made_outside_any_loop_binds_to_the_loop_of_its_first_call(address: str) -> None:
    client = ChronicleClient.connect(address, retry=FAST)  # at import, as Django or Celery code does
    first = asyncio.new_event_loop()
    try:
        opened = first.run_until_complete(client.submit(new_id(), bank.OpenAccount(owner="ann")))
        assert opened.version == 1

        async def from_another_loop() -> None:
            await client.submit(new_id(), bank.OpenAccount(owner="bob"))

        with pytest.raises(WrongEventLoop) as refused:
            asyncio.run(from_another_loop())
        assert refused.value.reason == "WRONG_EVENT_LOOP"
        assert "one client per event loop" in str(refused.value)
        assert isinstance(refused.value, ClientUsageError) and isinstance(refused.value, ChronicleError)
        first.run_until_complete(client.close())  # still closes from its own loop
    finally:
        first.close()


def test_a_client_used_from_another_threads_loop_is_refused_and_still_works_in_its_own(address: str) -> None:
    async def main() -> None:
        async with ChronicleClient.connect(address, retry=FAST) as client:
            await client.submit(new_id(), bank.OpenAccount(owner="ann"))  # binds it to this loop
            errors: list[BaseException] = []

            def in_a_thread() -> None:
                try:
                    asyncio.run(client.submit(new_id(), bank.OpenAccount(owner="bob")))
                except BaseException as error:
                    errors.append(error)

            thread = threading.Thread(target=in_a_thread)
            thread.start()
            await asyncio.to_thread(thread.join, 30)
            assert len(errors) == 1 and isinstance(errors[0], WrongEventLoop), errors
            again = await client.submit(new_id(), bank.OpenAccount(owner="cy"))  # unharmed
            assert again.version == 1

    asyncio.run(main())


def test_synchronous_code_shares_one_client_on_a_loop_in_a_thread_of_its_own(address: str) -> None:
    """docs/clients.md's pattern for Django and Celery: one loop in a
    daemon thread, the client made outside it and bound to it at its first
    call, coroutines handed to it from other threads."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    client = ChronicleClient.connect(address, retry=FAST)
    try:
        results: list[int] = []

        def a_task(owner: str) -> None:  # a view or a task, on a thread of its own
            call = client.submit(new_id(), bank.OpenAccount(owner=owner), timeout=10)
            results.append(asyncio.run_coroutine_threadsafe(call, loop).result(30).version)

        workers = [threading.Thread(target=a_task, args=(owner,)) for owner in ("ann", "bob", "cy")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert results == [1, 1, 1]
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


def server_side_connections(port: int) -> int:
    """The server's established TCP connections on ``port``, as the kernel
    sees them (Linux): one per client channel connected to it."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            count += int(local.rsplit(":", 1)[1], 16) == port and state == "01"  # 01: ESTABLISHED
    return count


def settled(port: int, expected: int) -> int:
    """The count once it is ``expected`` (or 10 s on: what it is then)."""
    deadline = time.monotonic() + 10
    while server_side_connections(port) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return server_side_connections(port)


async def use(client: ChronicleClient) -> None:
    """A first call, binding the client to the loop running it (and, for a
    routing client, the topology fetched and watched: a task of that loop)."""
    if client.routes is not None:
        await client.routes.first_topology()
    await client.submit(new_id(), bank.OpenAccount(owner="ann"), timeout=10)


def used_in_a_loop_since_closed(client: ChronicleClient) -> Callable[[], None]:
    """An ``asyncio.run`` that used the client, then closed its loop."""
    asyncio.run(use(client))
    return lambda: None


def used_in_a_loop_left_idle(client: ChronicleClient) -> Callable[[], None]:
    """A loop that ran the client's call, stopped but not closed."""
    loop = asyncio.new_event_loop()
    loop.run_until_complete(use(client))
    return loop.close


def used_in_a_loop_running_in_a_thread(client: ChronicleClient) -> Callable[[], None]:
    """A loop that runs on in a thread of its own (docs/clients.md's
    pattern for synchronous code)."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    asyncio.run_coroutine_threadsafe(use(client), loop).result(30)

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()

    return stop


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="counts connections in Linux's /proc/net/tcp")
@pytest.mark.parametrize(
    "bound", [used_in_a_loop_since_closed, used_in_a_loop_left_idle, used_in_a_loop_running_in_a_thread]
)
@pytest.mark.parametrize("routing", [False, True], ids=["plain", "routing"])
def test_a_client_closed_from_another_loop_closes_its_connection(
    tmp_path: Path, bound: Callable[[ChronicleClient], Callable[[], None]], routing: bool
) -> None:
    """Before: ``close()`` from another loop raised WrongEventLoop and
    dropped the channel, its connection open for as long as the client
    lived (its stubs hold it), left to the garbage collector. Now it is
    closed on its own loop (or at once if that loop runs no more): the
    server sees the connection end, nothing is left for the collector to
    warn about, and the client refuses calls as after any close."""
    with server_process(f"sqlite:///{tmp_path / 'events.db'}") as server:
        port = int(server.address.rsplit(":", 1)[1])
        client = ChronicleClient.connect(server.address, retry=FAST, routing=routing)
        done_with_loop = bound(client)
        try:
            assert settled(port, 1) == 1
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                asyncio.run(client.close())  # another loop than the one it is bound to
                assert settled(port, 0) == 0  # the client still referenced: not the collector's doing
                gc.collect()
            left = [w for w in warned if issubclass(w.category, ResourceWarning) or "nclosed" in str(w.message)]
            assert left == [], [str(w.message) for w in left]
            with pytest.raises(ClientClosed):
                asyncio.run(client.submit(new_id(), bank.OpenAccount(owner="bob")))
            asyncio.run(client.close())  # twice: harmless
        finally:
            done_with_loop()


def test_a_call_after_close_is_refused_as_client_closed_and_closing_twice_is_harmless(address: str) -> None:
    async def main() -> None:
        client = ChronicleClient.connect(address, retry=FAST)
        account = new_id()
        await client.submit(account, bank.OpenAccount(owner="ann"))
        await client.close()
        with pytest.raises(ClientClosed) as refused:
            await client.submit(account, bank.Deposit(amount=5))
        assert refused.value.reason == "CLIENT_CLOSED"
        with pytest.raises(ClientClosed):
            await client.read_all(account)
        with pytest.raises(ClientClosed):
            await client.projections.get("bank.balances_by_owner")
        await client.close()

    asyncio.run(main())


def test_a_client_closed_before_any_call_opens_no_channel_and_refuses_calls(address: str) -> None:
    async def main() -> None:
        client = ChronicleClient.connect(address)
        await client.close()
        with pytest.raises(ClientClosed):
            await client.get_aggregate("acc-1", bank.Account)

    asyncio.run(main())


def test_a_submit_that_times_out_raises_deadline_exceeded_with_its_command_id_which_resent_runs_once(
    address: str,
) -> None:
    async def main() -> None:
        async with ChronicleClient.connect(f"127.0.0.1:{free_port()}", retry=FAST) as nobody:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as timed_out:  # UNAVAILABLE retried until the deadline
                await nobody.submit("acc-t", bank.OpenAccount(owner="ann"), timeout=0.5)
            assert time.monotonic() - started < 5  # not the policy's 30 s
            assert timed_out.value.reason == "DEADLINE_EXCEEDED"
            assert timed_out.value.metadata["timeout"] == "0.5"
            command_id = timed_out.value.command_id
            assert command_id
        async with ChronicleClient.connect(address, retry=FAST) as client:
            account = new_id()
            first = await client.submit(account, bank.OpenAccount(owner="ann"), command_id=command_id, timeout=5)
            again = await client.submit(account, bank.OpenAccount(owner="ann"), command_id=command_id, timeout=5)
            assert (first.replayed, again.replayed) == (False, True)
            assert len(await client.read_all(account)) == 1

    asyncio.run(main())


def test_a_batch_and_a_state_read_time_out_too() -> None:
    async def main() -> None:
        async with ChronicleClient.connect(f"127.0.0.1:{free_port()}", retry=FAST) as nobody:
            commands = [Command("acc-b", bank.OpenAccount(owner="ann")), Command("acc-b", bank.Deposit(amount=1))]
            with pytest.raises(DeadlineExceeded) as timed_out:
                await nobody.submit_batch(commands, timeout=0.3)
            assert timed_out.value.command_ids == tuple(command.command_id for command in commands)
            with pytest.raises(DeadlineExceeded):
                await nobody.get_aggregate("acc-b", bank.Account, timeout=0.3)
            with pytest.raises(DeadlineExceeded):
                await nobody.projections.document("bank.balances_by_owner", "owner:ann", timeout=0.3)
            with pytest.raises(ValueError, match="timeout must be positive"):
                await nobody.submit("acc-b", bank.Deposit(amount=1), timeout=0)

    asyncio.run(main())
