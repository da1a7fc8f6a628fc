"""Claims of docs/security.md that no other test asserted exactly, each
over a real socket and a real server: what someone holding the database
file sees, how a changed security file is read again (and refused), and
what the audit log records when an open stream's credential ends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2, event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.base import AuditQuery
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from service.store.records import AuditEntry
from service.store.sqlite import SqliteStore
from tests.support.blocking import GatedStore
from tests.support.grpc_client import Client, command, connect, details_of, running_server
from tests.support.processes import serve_until_exit
from tests.support.reloading import Served, caught_up, end_of, reloading_server
from tests.support.security import POLICY, JwtIssuer, api_key_file, bearer, write
from tests.support.waiting import eventually

OWNER = "Philippa Northcote-Abernathy"
AMOUNT = 731_942
REFUSAL = f"the balance is {AMOUNT}"
SNAPSHOT_EVERY = 100


def on_disk(folder: Path) -> bytes:
    """Every byte of the SQLite data directory: the file and its WAL."""
    return b"".join(path.read_bytes() for path in folder.iterdir() if path.is_file())


def rows(database: Path, statement: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        return list(connection.execute(statement))


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


# -- someone with a copy of the database and no master key --------------------


async def test_a_copy_of_the_database_holds_no_master_key_snapshot_refusal_text_or_dry_run_text(
    tmp_path: Path,
) -> None:
    """ "Master keys never reach the database"; "ciphertext for payloads,
    snapshots, ... and refusal texts"; the audit's own entries (a dry run)
    have their messages "sealed under the aggregate's key when it has one".
    Before any forget: the database alone holds none of it."""
    master_key = new_master_key()
    keys = write(tmp_path / "master.keys", f"k1:{master_key}\n")
    folder = tmp_path / "db"
    store = SqliteStore(folder / "events.db")
    database = folder / "events.db"
    async with running_server(store, master_key_file=keys, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=OWNER)))
        for _ in range(SNAPSHOT_EVERY - 1):  # the bank plugin snapshots accounts every 100 events
            await client.submit(command("acc-1", bank.Deposit(amount=1)))
        await client.submit(command("acc-1", bank.Deposit(amount=AMOUNT - SNAPSHOT_EVERY + 1)))
        await eventually(lambda: rows(database, "SELECT count(*) FROM snapshots")[0][0] >= 1, what="a snapshot taken")
        too_much = command("acc-1", bank.Withdraw(amount=AMOUNT + 1))
        submitted = await refused(client.submit(too_much))
        dry = await refused(
            client.commands.Submit(
                command_service_pb2.SubmitRequest(
                    command=command("acc-1", bank.Withdraw(amount=AMOUNT + 2)), dry_run=True
                )
            )
        )
        for error in (submitted, dry):  # the service says it, to a caller that may read
            assert details_of(error).reason == "INSUFFICIENT_FUNDS"
            assert REFUSAL in (error.details() or "")
        audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acc-1"))
        (dry_entry,) = [e for e in audit.entries if e.dry_run]
        assert REFUSAL in dry_entry.message  # administrators read it
        stolen = on_disk(folder)
        assert rows(database, "SELECT count(*) FROM refusals WHERE dry_run")[0][0] == 1  # the dry run's entry

    assert b"acc-1" in stolen and b"INSUFFICIENT_FUNDS" in stolen  # the envelope and reasons are in the clear
    for secret in (OWNER, REFUSAL, f'"balance":"{AMOUNT}"', f"{AMOUNT + 2}"):
        assert secret.encode() not in stolen, secret
    raw_master_key = base64.b64decode(master_key)
    assert master_key.encode() not in stolen
    assert raw_master_key not in stolen and raw_master_key.hex().encode() not in stolen


async def test_a_payload_copied_to_another_row_of_the_database_does_not_decrypt(tmp_path: Path) -> None:
    """ "Each ciphertext is bound to its aggregate and event id ..., so a
    payload copied to another row does not decrypt (DATA_LOSS,
    PAYLOAD_NOT_DECRYPTABLE)": whoever can write the database cannot move
    one event's payload under another, not even within one aggregate (same
    data key, same event type)."""
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    database = tmp_path / "db" / "events.db"
    async with running_server(SqliteStore(database), master_key_file=keys) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=OWNER)))
        await client.submit(command("acc-1", bank.Deposit(amount=1)))
        await client.submit(command("acc-1", bank.Deposit(amount=1_000_000)))
        await client.submit(command("acc-2", bank.OpenAccount(owner="Other Person")))
    with sqlite3.connect(database) as connection:  # the server is stopped: its caches are gone
        for target, source in ((("acc-1", 3), ("acc-1", 2)), (("acc-2", 1), ("acc-1", 1))):
            connection.execute(
                "UPDATE events SET payload = (SELECT payload FROM events WHERE aggregate_id = ? AND version = ?)"
                " WHERE aggregate_id = ? AND version = ?",
                (*source, *target),
            )

    async with running_server(SqliteStore(database), master_key_file=keys) as (_, client):
        for aggregate_id in ("acc-1", "acc-2"):
            request = event_service_pb2.ReadAggregateRequest(aggregate_id=aggregate_id)
            error = await refused(_drain(client.events.ReadAggregate(request)))
            assert (error.code(), details_of(error).reason) == (grpc.StatusCode.DATA_LOSS, "PAYLOAD_NOT_DECRYPTABLE")


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


# -- security files read again (--auth-reload-seconds) ---------------------------

ALICE_KEY = "chr_alice-claims-test-key-0123456789abcdef0123456789"
ALICE_NEW_KEY = "chr_alice-claims-test-key-new-456789abcdef0123456789"
ROOT_KEY = "chr_root-claims-test-key-0123456789abcdef0123456789ab"
CANNOT_BE_USED = "cannot be used"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    # A subscribe grant for every type (root), so streams of both principals can be opened.
    policy = POLICY.replace('[roles.operator]\nread = ["*"]', '[roles.operator]\nread = ["*"]\nsubscribe = ["*"]')
    keys: list[tuple[str, str, list[str]]] = [(ALICE_KEY, "alice", []), (ROOT_KEY, "root", [])]
    async with reloading_server(tmp_path, keys=keys, policy=policy) as server:
        yield server


async def reason_for(served: Served, token: str) -> str:
    """What a new account opened with ``token`` gets: "" if accepted, else its reason."""
    async with connect(served.app.address, interceptors=bearer(token)) as caller:
        try:
            await caller.submit(command(f"acc-{os.urandom(6).hex()}", bank.OpenAccount(owner="ann"), user_id=""))
        except grpc.aio.AioRpcError as error:
            return details_of(error).reason
    return ""


def replace_file(path: Path, content: str, *, mode: int = 0o600) -> None:
    """Put ``content`` at ``path`` at once, with ``mode`` already set (as an
    editor or a deployment tool does): the server never sees a half-made file."""
    staged = path.with_name(path.name + ".new")
    write(staged, content, mode=mode)
    os.replace(staged, path)


def keys_file_text(*keys: tuple[str, str]) -> str:
    """An API-key file's text, as ``api_key_file`` writes it."""
    return "\n".join(
        f'[[keys]]\nprincipal = "{principal}"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\nroles = []\n'
        for key, principal in keys
    )


async def test_a_changed_key_file_others_may_read_is_refused_until_chmod_600_fixes_it(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """ "A changed file is loaded and checked as at start-up (its permissions
    too)"; one that cannot be used (a key file others may read) "is logged at
    ERROR once, and the one read before stays in use ...; fix it and it is
    read again". The fix the refusal names is ``chmod 600``, which changes
    neither the file's content, size, modification time nor inode."""
    caplog.set_level(logging.ERROR, logger="service.security.reloading")
    replace_file(served.keys, keys_file_text((ALICE_NEW_KEY, "alice"), (ROOT_KEY, "root")), mode=0o644)
    await eventually(lambda: CANNOT_BE_USED in caplog.text, what="the readable file refused")
    assert "open to its group or to others" in caplog.text and "chmod 600" in caplog.text
    assert await reason_for(served, ALICE_KEY) == ""  # the keys read before
    assert await reason_for(served, ALICE_NEW_KEY) == "UNKNOWN_API_KEY"

    served.keys.chmod(0o600)

    async def fixed() -> bool:
        return await reason_for(served, ALICE_NEW_KEY) == ""

    await eventually(fixed, what="the file read again once private")
    assert await reason_for(served, ALICE_KEY) == "UNKNOWN_API_KEY"
    assert caplog.text.count(CANNOT_BE_USED) == 1


@pytest.mark.parametrize("broken", ["an undefined role", "the file gone"])
async def test_a_policy_that_cannot_be_used_keeps_the_one_before_until_it_is_fixed(
    served: Served, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    caplog.set_level(logging.ERROR, logger="service.security.reloading")
    before = served.policy.read_text()
    if broken == "the file gone":
        served.policy.unlink()
    else:
        replace_file(served.policy, before.replace('roles = ["teller"]', 'roles = ["tellr"]'))
    await eventually(lambda: CANNOT_BE_USED in caplog.text, what="the broken policy reported")
    assert await reason_for(served, ALICE_KEY) == ""  # alice is still a teller

    replace_file(served.policy, before.replace('roles = ["teller"]', "roles = []"))

    async def fixed() -> bool:
        return await reason_for(served, ALICE_KEY) == "SUBMIT_DENIED"

    await eventually(fixed, what="the fixed policy read")
    assert caplog.text.count(CANNOT_BE_USED) == 1


async def test_a_symbolic_link_swapped_to_a_file_of_the_same_size_and_time_is_seen(tmp_path: Path) -> None:
    """ "Each file's modification time, size and inode are compared, so a
    Kubernetes secret ... updated in place (a symbolic link swapped) is seen
    too": the new file here differs from the old one by its inode alone."""
    old_dir, new_dir = tmp_path / "..2026_01", tmp_path / "..2026_02"
    old_dir.mkdir()
    new_dir.mkdir()
    api_key_file(old_dir / "keys.toml", [(ALICE_KEY, "alice", [])])
    api_key_file(new_dir / "keys.toml", [(ALICE_NEW_KEY, "alice", [])])
    assert len(ALICE_KEY) == len(ALICE_NEW_KEY)  # the same size: the digests are as long
    seen = os.stat(old_dir / "keys.toml")
    os.utime(new_dir / "keys.toml", ns=(seen.st_atime_ns, seen.st_mtime_ns))
    (tmp_path / "..data").symlink_to(old_dir.name)
    (tmp_path / "keys.toml").symlink_to("..data/keys.toml")
    policy = write(tmp_path / "policy.toml", POLICY)
    async with running_server(
        MemoryStore(),
        auth=True,
        api_keys_file=str(tmp_path / "keys.toml"),
        policy_file=policy,
        auth_reload_seconds=0.05,
    ) as (app, _):
        served = Served(app, tmp_path / "keys.toml", Path(policy), Path(), JwtIssuer())
        assert await reason_for(served, ALICE_KEY) == ""
        (tmp_path / "..data_tmp").symlink_to(new_dir.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # as the kubelet swaps it
        swapped = os.stat(tmp_path / "keys.toml")
        assert (swapped.st_mtime_ns, swapped.st_size) == (seen.st_mtime_ns, seen.st_size)

        async def swapped_in() -> bool:
            return await reason_for(served, ALICE_KEY) == "UNKNOWN_API_KEY"

        await eventually(swapped_in, what="the swapped file read")
        assert await reason_for(served, ALICE_NEW_KEY) == ""


async def test_a_unary_call_under_way_finishes_under_the_key_that_admitted_it(tmp_path: Path) -> None:
    """ "Unary calls already under way finish under what admitted them": a
    Submit held inside the store while its key is revoked is answered, and
    its command recorded under its principal; a call after the revocation
    is refused."""
    store = GatedStore(MemoryStore())
    keys: list[tuple[str, str, list[str]]] = [(ALICE_KEY, "alice", []), (ROOT_KEY, "root", [])]
    async with reloading_server(tmp_path, keys=keys, policy=POLICY, store=store) as served:
        async with connect(served.app.address, interceptors=bearer(ALICE_KEY)) as alice:
            sent = command("acc-held", bank.OpenAccount(owner="ann"), user_id="")
            held = asyncio.ensure_future(alice.submit(sent))
            await store.entered.wait()  # admitted, decided, and waiting on its append
            write(served.keys, keys_file_text((ROOT_KEY, "root")))

            async def revoked() -> bool:
                with pytest.raises(grpc.aio.AioRpcError) as refused_now:
                    await alice.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-held"))
                return details_of(refused_now.value).reason == "UNKNOWN_API_KEY"

            await eventually(revoked, what="the revoked key refused")
            assert not held.done()
            store.gate.set()
            answered = await asyncio.wait_for(held, 10)
        assert answered.version == 1
        record = await store.inner.find_command(sent.command_id)
        assert record is not None and record.principal == "alice"


# -- an open stream's end, audited ------------------------------------------------


def command_stream(plain: Client, key: str) -> Any:
    """A SubmitStream with ``key`` as call metadata on a channel without
    interceptors: grpc.aio runs an intercepted request stream through a task
    of its own, which fails unheard when the server ends the call (and the
    session-wide test loop reports it in a later test)."""
    return plain.commands.SubmitStream(metadata=(("authorization", f"Bearer {key}"),))


def subscribe(client: Client) -> Any:
    return client.events.Subscribe(event_service_pb2.SubscribeRequest(aggregate_types=["Account"], pages=True))


async def audited(served: Served, reason: str) -> list[AuditEntry]:
    entries = await served.app.store.audit.read_audit(AuditQuery())
    return [e for e in entries if e.reason == reason]


async def test_a_revoked_key_or_a_rotated_jwt_key_ending_open_streams_is_audited_naming_the_principal(
    served: Served,
) -> None:
    """ "Each end is audited as a refusal naming the principal and the
    reason"; "command_type is the RPC's full name (empty for a command
    stream)"."""
    async with (
        connect(served.app.address, interceptors=bearer(ALICE_KEY)) as by_key,
        connect(served.app.address, interceptors=bearer(served.issuer.token("alice"))) as by_token,
        connect(served.app.address) as plain,
    ):
        keyed, tokened = subscribe(by_key), subscribe(by_token)
        await caught_up(keyed)
        await caught_up(tokened)
        commands = command_stream(plain, ALICE_KEY)
        await commands.write(
            command_service_pb2.SubmitRequest(command=command("acc-s", bank.OpenAccount(owner="a"), user_id=""))
        )
        assert (await commands.read()).WhichOneof("result") is not None

        write(served.keys, keys_file_text((ROOT_KEY, "root")))
        for call in (keyed, commands):
            ended = await end_of(call)
            assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_API_KEY")
        write(served.jwt_key, JwtIssuer().public_key)
        ended = await end_of(tokened)
        assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")

    revoked = await audited(served, "UNKNOWN_API_KEY")
    assert sorted((e.principal, e.command_type) for e in revoked) == [
        ("alice", ""),
        ("alice", "chronicle.v1.EventService/Subscribe"),
    ]
    rotated = await audited(served, "INVALID_TOKEN")
    assert [(e.principal, e.command_type) for e in rotated] == [("alice", "chronicle.v1.EventService/Subscribe")]


async def test_a_subscription_ended_because_its_grants_changed_is_audited_and_so_is_its_denied_reopening(
    served: Served,
) -> None:
    """ "Each end is audited as a refusal naming the principal and the
    reason (and the refusal of the stream opened again, if the new grants
    deny it)"."""
    async with connect(served.app.address, interceptors=bearer(ROOT_KEY)) as root:
        subscription = subscribe(root)
        await caught_up(subscription)
        write(served.policy, served.policy.read_text().replace('read = ["*"]\nsubscribe = ["*"]', 'read = ["*"]'))
        ended = await end_of(subscription)
        assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAVAILABLE, "CREDENTIALS_CHANGED")
        reopened = await end_of(subscribe(root))
        assert (reopened.code(), details_of(reopened).reason) == (grpc.StatusCode.PERMISSION_DENIED, "SUBSCRIBE_DENIED")
    changed = await audited(served, "CREDENTIALS_CHANGED")
    assert [(e.principal, e.command_type) for e in changed] == [("root", "chronicle.v1.EventService/Subscribe")]
    denied = await audited(served, "SUBSCRIBE_DENIED")
    assert [(e.principal, e.command_type) for e in denied] == [("root", "chronicle.v1.EventService/Subscribe")]


async def test_a_command_stream_ended_because_its_grants_changed_is_audited_naming_the_principal(
    served: Served,
) -> None:
    async with connect(served.app.address) as plain:
        commands = command_stream(plain, ALICE_KEY)
        await commands.write(
            command_service_pb2.SubmitRequest(command=command("acc-c", bank.OpenAccount(owner="a"), user_id=""))
        )
        assert (await commands.read()).WhichOneof("result") is not None
        write(served.policy, served.policy.read_text().replace('[principals."alice"]\nroles = ["teller"]', ""))
        ended = await end_of(commands)
        assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAVAILABLE, "CREDENTIALS_CHANGED")
    changed = await audited(served, "CREDENTIALS_CHANGED")
    assert [(e.principal, e.command_type) for e in changed] == [("alice", "")]


# -- what stops the start ---------------------------------------------------------


@pytest.mark.parametrize(
    ("leave_out", "reason", "says"),
    [
        ("--policy-file", "BAD_SETTING", "--auth needs a --policy-file"),
        ("--api-keys-file", "BAD_SETTING", "--auth needs a credential source"),
        ("policy with an undefined role", "BAD_POLICY", "tellr"),
    ],
)
def test_auth_without_a_policy_or_a_credential_source_or_with_a_broken_policy_does_not_start(
    tmp_path: Path, leave_out: str, reason: str, says: str
) -> None:
    """ "The server refuses to start with --auth but no policy file or no
    credential source"; "undefined roles ... stop the server at start-up
    (BAD_POLICY)": exit status 2, one line ``error: REASON: ...``."""
    policy = POLICY.replace('roles = ["teller"]', 'roles = ["tellr"]') if reason == "BAD_POLICY" else POLICY
    arguments = {
        "--policy-file": write(tmp_path / "policy.toml", policy),
        "--api-keys-file": api_key_file(tmp_path / "keys.toml", [(ALICE_KEY, "alice", [])]),
    }
    arguments.pop(leave_out, None)
    result = serve_until_exit("--database-url", "memory://", "--auth", *[a for p in arguments.items() for a in p])
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {reason}: ") and says in line, line
