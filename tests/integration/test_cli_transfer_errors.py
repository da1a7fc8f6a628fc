"""The command line's file-taking commands when something is wrong: each
says what, in one `error:` line (a reason a script can match on), exits
with a status that tells usage (2) from a refusal (1), and writes nothing.
The command line runs in-process (``cli.main``) against a server on the
memory store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import cli
from service.store.memory import MemoryStore
from service.store.records import LogFilter
from tests.support.grpc_client import command, running_server


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``chronicle ARGV``: its exit status, standard output and standard error."""
    status = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_restoring_an_aggregate_the_archive_does_not_hold_says_so_and_restores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix: exit 0, nothing written, nothing said."""
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True) as (app, client):
        for account in ("acc-1", "acc-2"):
            await client.submit(command(account, bank.OpenAccount(owner="ann")))
        at = ("--server", app.address)
        status, out, _ = await run(capsys, "archive", str(tmp_path), "--type", "Account", "--untouched-for", "0s", *at)
        archive = json.loads(out)["file"]
        assert status == 0 and json.loads(out)["archived"] == ["acc-1", "acc-2"]
        log = (await store.read_log(0, LogFilter(), 100)).events

        status, out, err = await run(
            capsys, "restore", archive, "--aggregate", "acc-1", "--aggregate", "acc-nothere", *at
        )
        assert (status, out) == (2, "")
        assert err.startswith(f"error: NOT_IN_ARCHIVE: 'acc-nothere' is not in the archive {archive}"), err
        assert "it holds acc-1, acc-2" in err and "nothing was restored" in err
        assert (await store.read_log(0, LogFilter(), 100)).events == log  # acc-1 was not restored either

        status, out, err = await run(capsys, "restore", archive, "--aggregate", "acc-1", *at)
        assert (status, json.loads(out)["events_written"]) == (0, 1)
