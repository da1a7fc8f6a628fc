"""Clients that go away after sending a command (a deadline far shorter than
the command, a channel closed right after the call went out) and retry it
with the same command id: the command takes effect once, and the retry gets
the original result."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import command_service_pb2, command_service_pb2_grpc
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from tests.support.faults import appends_blocked, log_head, wait_for_waiters
from tests.support.grpc_client import command, connect
from tests.support.history import History, Operation, SubscriberLog, check_invariants
from tests.support.load import Bank, Followers, caught_up
from tests.support.processes import replica

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REGISTRY = Registry([bank_account.plugin])


def request(op: Operation) -> command_service_pb2.SubmitRequest:
    return command_service_pb2.SubmitRequest(command=command(op.aggregate_id, op.message, command_id=op.command_id))


async def test_commands_whose_clients_left_take_effect_once_and_retries_get_the_original_result(
    postgres_url: str, tmp_path: Path, followers: Followers
) -> None:
    history = History()
    load = Bank(history, ["acc-deadline", "acc-closed"], random.Random(11))
    subscriber = SubscriberLog("subscriber")
    with replica(postgres_url, log_path=tmp_path / "server.log") as server:
        follower = followers.start(server.address, subscriber)
        async with connect(server.address) as client:
            await load.open_accounts([client])
            timed_out = history.begin("acc-deadline", bank.Deposit(amount=7))
            abandoned = history.begin("acc-closed", bank.Deposit(amount=9))
            with appends_blocked(postgres_url):
                # The server holds both commands inside their appends when
                # the clients go: one by its deadline, one by closing.
                with pytest.raises(grpc.aio.AioRpcError) as expired:
                    await client.commands.Submit(request(timed_out), timeout=0.3)
                assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                history.unknown(timed_out, expired.value)
                await asyncio.to_thread(wait_for_waiters, postgres_url)  # it runs on, nobody waiting
                leaving = grpc.aio.insecure_channel(server.address)
                call = command_service_pb2_grpc.CommandServiceStub(leaving).Submit(request(abandoned))
                await asyncio.sleep(0.05)  # on its way; whether it arrived is not assumed below
                await leaving.close()  # the call goes with it, unanswered
                assert call.cancelled()
                history.unknown(abandoned, "CANCELLED")
            for op in (timed_out, abandoned):
                retried = await client.submit(command(op.aggregate_id, op.message, command_id=op.command_id))
                # The timed-out command ran on while nobody waited: this is its
                # result. The abandoned one may or may not have been taken up
                # before its caller went; either way it takes effect once.
                assert retried.replayed or op is abandoned
                history.ok(op, retried)
                again = await client.submit(command(op.aggregate_id, op.message, command_id=op.command_id))
                assert again.replayed
                history.ok(op, again)  # the same events both times, or History refuses
        await caught_up(subscriber, log_head(postgres_url), follower=follower)
    states = check_invariants(history, postgres_url, REGISTRY, subscribers=[subscriber])
    assert states["acc-deadline"].balance == 7  # type: ignore[attr-defined]
    assert states["acc-closed"].balance == 9  # type: ignore[attr-defined]
