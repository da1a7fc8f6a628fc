"""Authentication and authorization over a real socket: bearer tokens (JWT
and API keys), the policy, impersonation, reads, and the admin grant."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chronicle.v1 import (
    admin_service_pb2,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    command_service_pb2,
    event_service_pb2,
    subscription_group_service_pb2,
    subscription_group_service_pb2_grpc,
)
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.app import Application
from service.errors import ConfigurationError
from service.security.credentials import ApiKeys
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from tests.support.contents import at_rest
from tests.support.grpc_client import (
    Client,
    asking_again_if_lost,
    command,
    connect,
    details_of,
    running_server,
    with_jwt_auth,
)
from tests.support.security import POLICY, JwtIssuer, api_key_file, bearer

ALICE_KEY = "chr_alice-test-key-0123456789abcdef0123456789"


@dataclass
class Secured:
    app: Application
    issuer: JwtIssuer
    store: MemoryStore

    def client(self, token: str | None = None) -> AbstractAsyncContextManager[Client]:
        return connect(self.app.address, interceptors=bearer(token) if token is not None else ())

    def as_(self, subject: str, **claims: Any) -> AbstractAsyncContextManager[Client]:
        return self.client(self.issuer.token(subject, **claims))


@asynccontextmanager
async def secured_server(tmp_path: Path, *, jwt_audience: str = "", policy: str = POLICY) -> AsyncIterator[Secured]:
    issuer, store = JwtIssuer(), MemoryStore()
    async with running_server(
        store,
        settings=with_jwt_auth(tmp_path, issuer, policy),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ALICE_KEY, "alice", [])]),
        jwt_audience=jwt_audience,
    ) as (app, _):
        yield Secured(app, issuer, store)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    async with secured_server(tmp_path) as server:
        yield server


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason


async def versions(secured: Secured, aggregate_id: str) -> list[int]:
    async with secured.as_("root") as root:
        request = event_service_pb2.ReadAggregateRequest(aggregate_id=aggregate_id)
        return [e.version async for e in root.events.ReadAggregate(request)]


# -- who is calling ---------------------------------------------------------


async def test_a_call_without_credentials_is_unauthenticated_and_writes_nothing(secured: Secured) -> None:
    before = await at_rest(secured.store)
    async with secured.client() as anonymous:
        outcome = await refused(anonymous.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "NO_CREDENTIALS")
    changes = (await at_rest(secured.store)).changes_since(before)
    assert list(changes) == ["refusals"]  # the audit entry of the refusal, nothing else
    (entry,) = changes["refusals"].added
    assert "NO_CREDENTIALS" in entry


async def test_an_unknown_api_key_is_unauthenticated(secured: Secured) -> None:
    async with secured.client("chr_not-a-key") as stranger:
        outcome = await refused(stranger.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_API_KEY")


async def test_a_token_naming_a_reaction_s_principal_is_unauthenticated_and_audited_as_no_reaction(
    secured: Secured,
) -> None:
    """Reactions send their commands as ``reaction:<name>``, and the audit
    records that principal: no credential may stand for such a name."""
    async with secured.as_("reaction:bank.transfers", roles=["teller"]) as impostor:
        outcome = await refused(impostor.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "RESERVED_PRINCIPAL")
    assert await secured.store.head("acc-1") is None
    refusals = await secured.store.read_audit(AuditQuery(principal="reaction:bank.transfers"))
    assert refusals == []  # the refusal is audited as the unauthenticated caller's, not the reaction's


def test_an_api_key_file_naming_a_reaction_s_principal_is_refused(tmp_path: Path) -> None:
    path = api_key_file(tmp_path / "keys.toml", [("chr_some-key-0123456789abcdef", "reaction:bank.transfers", [])])
    with pytest.raises(ConfigurationError, match="kept for reactions") as refused_file:
        ApiKeys.load(path)
    assert refused_file.value.reason == "BAD_API_KEYS"


async def test_authorization_metadata_must_be_a_bearer_token(secured: Secured) -> None:
    async with connect(secured.app.address) as client:
        call = client.commands.Submit(command_request("acc-1"), metadata=(("authorization", "Basic YWxpY2U6c2VjcmV0"),))
        assert await refused(call) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_AUTHORIZATION_METADATA")


@pytest.mark.parametrize("second", [ALICE_KEY, "chr_not-a-key", "Basic YWxpY2U6c2VjcmV0"])
async def test_authorization_metadata_sent_twice_is_refused_whatever_the_second_says(
    secured: Secured, second: str
) -> None:
    """The first used to win and the second to be ignored: a proxy in front
    that checked the other one would disagree with the server about who calls."""
    metadata = (("authorization", f"Bearer {ALICE_KEY}"), ("authorization", second))
    async with connect(secured.app.address) as client:
        call = client.commands.Submit(command_request("acc-1"), metadata=metadata)
        assert await refused(call) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_AUTHORIZATION_METADATA")
    assert await secured.store.head("acc-1") is None
    (entry,) = await secured.store.read_audit(AuditQuery())
    assert (entry.principal, entry.reason) == ("", "BAD_AUTHORIZATION_METADATA")


def command_request(aggregate_id: str) -> command_service_pb2.SubmitRequest:
    return command_service_pb2.SubmitRequest(command=command(aggregate_id, bank.OpenAccount(owner="ann")))


async def test_an_api_key_authenticates_its_principal(secured: Secured) -> None:
    async with secured.client(ALICE_KEY) as alice:
        response = await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    assert response.events[0].user_id == "alice"


async def test_a_jwt_authenticates_its_subject(secured: Secured) -> None:
    async with secured.as_("alice") as alice:
        response = await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    assert response.events[0].user_id == "alice"


async def test_an_expired_jwt_is_unauthenticated(secured: Secured) -> None:
    async with secured.as_("alice", expires_in=-3600) as alice:
        outcome = await refused(alice.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


@pytest.mark.parametrize(("expired_ago", "outcome"), [(10, "alice"), (60, "TOKEN_EXPIRED")])
async def test_a_jwt_expired_less_than_30_seconds_ago_still_verifies(
    secured: Secured, expired_ago: int, outcome: str
) -> None:
    """30 s of leeway for clocks that disagree, and no more."""
    async with secured.as_("alice", expires_in=-expired_ago) as alice:
        opening = alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        if outcome == "alice":
            assert (await opening).events[0].user_id == "alice"
        else:
            assert await refused(opening) == (grpc.StatusCode.UNAUTHENTICATED, outcome)


@pytest.mark.parametrize("subject", ["", " root", "root\n"])
async def test_a_jwt_whose_subject_names_no_one_is_unauthenticated_and_holds_no_roles(
    secured: Secured, subject: str
) -> None:
    """An empty subject used to be accepted as the principal '' (shown as
    "an anonymous caller"), with the token's roles."""
    async with secured.as_(subject, roles=["operator", "teller"]) as caller:
        outcome = await refused(caller.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="")))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
    assert await secured.store.head("acc-1") is None


async def test_a_jwt_time_given_as_a_string_is_unauthenticated(secured: Secured) -> None:
    claims = {"sub": "root", "iss": secured.issuer.issuer, "exp": "9999999999"}
    async with secured.client(secured.issuer.sign(claims)) as caller:
        outcome = await refused(caller.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


@pytest.mark.parametrize("missing", ["exp", "sub", "iss"])
async def test_a_jwt_without_a_required_claim_is_unauthenticated(secured: Secured, missing: str) -> None:
    claims = {"sub": "root", "iss": secured.issuer.issuer, "exp": int(time.time()) + 300}
    del claims[missing]
    async with secured.client(secured.issuer.sign(claims)) as caller:
        outcome = await refused(caller.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_a_jwt_from_another_issuer_is_unauthenticated(secured: Secured) -> None:
    token = secured.issuer.token("alice", issuer="https://elsewhere.test")
    async with secured.client(token) as alice:
        outcome = await refused(alice.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "WRONG_ISSUER")


async def test_a_jwt_signed_with_another_key_is_unauthenticated(secured: Secured) -> None:
    forged = JwtIssuer(secured.issuer.issuer).token("root")
    async with secured.client(forged) as mallory:
        outcome = await refused(mallory.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_an_unsigned_none_algorithm_jwt_is_unauthenticated(secured: Secured) -> None:
    unsigned = jwt.encode({"sub": "root", "iss": secured.issuer.issuer, "exp": 4102444800}, "", algorithm="none")
    async with secured.client(unsigned) as mallory:
        outcome = await refused(mallory.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


def hmac_token(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT made by hand: PyJWT refuses to sign with a PEM key as
    the HMAC secret, which is what an attacker would do."""

    def encoded(part: bytes) -> bytes:
        return base64.urlsafe_b64encode(part).rstrip(b"=")

    header = encoded(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = encoded(json.dumps(claims).encode())
    signature = encoded(hmac.new(secret, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


async def test_a_jwt_signed_with_hmac_under_the_servers_public_key_is_unauthenticated(secured: Secured) -> None:
    """Algorithm confusion: the public key is public, so a token "signed"
    with it as an HMAC secret would be anyone's to make."""
    claims = {"sub": "root", "iss": secured.issuer.issuer, "exp": int(time.time()) + 300}
    for secret in (secured.issuer.public_key, secured.issuer.public_key.strip()):
        async with secured.client(hmac_token(claims, secret)) as mallory:
            outcome = await refused(mallory.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
        assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_a_jwt_of_another_key_type_is_unauthenticated_not_an_internal_error(secured: Secured) -> None:
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"sub": "root", "iss": secured.issuer.issuer, "exp": int(time.time()) + 300}
    async with secured.client(jwt.encode(claims, signer, algorithm="RS256")) as mallory:
        outcome = await refused(mallory.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


# The audience rule (docs/security.md): ``aud`` must name --jwt-audience if
# it is set, and be absent if it is not.
AUDIENCE = "https://chronicle.test"
NOT_SET = object()


@pytest.mark.parametrize(
    ("configured", "aud", "outcome"),
    [
        ("", NOT_SET, "alice"),
        ("", AUDIENCE, "WRONG_AUDIENCE"),
        ("", [AUDIENCE], "WRONG_AUDIENCE"),
        (AUDIENCE, AUDIENCE, "alice"),
        (AUDIENCE, ["https://other.test", AUDIENCE], "alice"),
        (AUDIENCE, "https://other.test", "WRONG_AUDIENCE"),
        (AUDIENCE, ["https://other.test"], "WRONG_AUDIENCE"),
        (AUDIENCE, NOT_SET, "INVALID_TOKEN"),  # PyJWT: 'Token is missing the "aud" claim'
    ],
    ids=[
        "none configured, none sent",
        "none configured, one sent",
        "none configured, a list sent",
        "configured, the same sent",
        "configured, a list holding it sent",
        "configured, another sent",
        "configured, a list without it sent",
        "configured, none sent",
    ],
)
async def test_a_jwt_audience_must_name_the_configured_one_or_be_absent(
    tmp_path: Path, configured: str, aud: object, outcome: str
) -> None:
    claims = {} if aud is NOT_SET else {"aud": aud}
    async with secured_server(tmp_path, jwt_audience=configured) as server, server.as_("alice", **claims) as alice:
        opening = alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        if outcome == "alice":
            assert (await opening).events[0].user_id == "alice"
        else:
            assert await refused(opening) == (grpc.StatusCode.UNAUTHENTICATED, outcome)


async def test_health_checks_need_no_credentials(secured: Secured) -> None:
    async with secured.client() as anonymous:
        response = await health_pb2_grpc.HealthStub(anonymous.channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# -- what the caller may do ---------------------------------------------------


async def test_a_command_type_outside_the_callers_roles_is_permission_denied(secured: Secured) -> None:
    async with secured.as_("bob") as bob:
        outcome = await refused(bob.submit(command("acc-1", bank.OpenAccount(owner="bob"), user_id="")))
    assert outcome == (grpc.StatusCode.PERMISSION_DENIED, "SUBMIT_DENIED")
    assert await versions(secured, "acc-1") == []


async def test_a_batch_with_one_command_outside_the_callers_roles_is_denied_whole(secured: Secured) -> None:
    batch = command_service_pb2.SubmitBatchRequest(
        commands=[
            command("acc-1", bank.OpenAccount(owner="ann"), user_id=""),
            command("acc-1", bank.CloseAccount(), user_id=""),
        ]
    )
    async with secured.as_("alice") as alice:
        outcome = await refused(alice.commands.SubmitBatch(batch))
    assert outcome == (grpc.StatusCode.PERMISSION_DENIED, "SUBMIT_DENIED")
    assert await versions(secured, "acc-1") == []


async def test_a_dry_run_is_authorized_like_the_command(secured: Secured) -> None:
    dry = command_service_pb2.SubmitRequest(
        command=command("acc-1", bank.OpenAccount(owner="bob"), user_id=""), dry_run=True
    )
    async with secured.as_("bob") as bob:
        outcome = await refused(bob.commands.Submit(dry))
    assert outcome == (grpc.StatusCode.PERMISSION_DENIED, "SUBMIT_DENIED")


async def test_a_principal_the_policy_does_not_know_is_denied_everything(secured: Secured) -> None:
    async with secured.as_("eve") as eve:
        outcome = await refused(eve.submit(command("box-1", box_pb2.CreateBox(name="x"), user_id="")))
    assert outcome == (grpc.StatusCode.PERMISSION_DENIED, "SUBMIT_DENIED")


async def test_roles_in_the_token_are_granted(secured: Secured) -> None:
    async with secured.as_("eve", roles=["boxer"]) as eve:
        response = await eve.submit(command("box-1", box_pb2.CreateBox(name="x"), user_id=""))
    assert response.version == 1


async def test_acting_as_another_user_is_permission_denied(secured: Secured) -> None:
    async with secured.as_("alice") as alice:
        outcome = await refused(alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="carol")))
    assert outcome == (grpc.StatusCode.PERMISSION_DENIED, "IMPERSONATION_DENIED")
    assert await versions(secured, "acc-1") == []


async def test_an_impersonation_grant_lets_a_principal_act_for_a_user(secured: Secured) -> None:
    async with secured.as_("gateway") as gateway:
        response = await gateway.submit(command("acc-1", bank.OpenAccount(owner="carol"), user_id="carol"))
    assert response.events[0].user_id == "carol"


async def test_reading_a_forbidden_aggregate_type_is_permission_denied(secured: Secured) -> None:
    async with secured.as_("alice") as alice:
        await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    async with secured.as_("bob") as bob:
        read = event_service_pb2.ReadAggregateRequest(aggregate_id="acc-1")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            [e async for e in bob.events.ReadAggregate(read)]
        get = bob.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
        assert await refused(get) == (grpc.StatusCode.PERMISSION_DENIED, "READ_DENIED")
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "READ_DENIED")


async def test_reading_a_permitted_aggregate_type_works(secured: Secured) -> None:
    async with secured.as_("bob") as bob:
        await bob.submit(command("box-1", box_pb2.CreateBox(name="tools"), user_id=""))
        state = await bob.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="box-1"))
    assert (state.aggregate_type, state.version) == ("Box", 1)


async def test_the_audit_log_needs_the_admin_grant(secured: Secured) -> None:
    async with secured.as_("alice") as alice:
        call = alice.admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
        assert await refused(call) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED")


# -- subscriptions ------------------------------------------------------------


async def test_a_subscription_carries_only_the_aggregate_types_the_caller_may_subscribe_to(secured: Secured) -> None:
    async with secured.as_("bob") as bob:
        await bob.submit(command("box-1", box_pb2.CreateBox(name="tools"), user_id=""))
    async with secured.as_("alice") as alice:
        await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        stream = alice.events.Subscribe(event_service_pb2.SubscribeRequest())
        seen = []
        async for response in stream:
            if response.HasField("caught_up"):
                break
            seen.append(response.event.aggregate_type)
        stream.cancel()
    assert seen == ["Account"]


async def test_subscribing_to_a_forbidden_aggregate_type_is_permission_denied(secured: Secured) -> None:
    async with secured.as_("alice") as alice:
        stream = alice.events.Subscribe(event_service_pb2.SubscribeRequest(aggregate_types=["Box"]))
        assert await refused(stream.read()) == (grpc.StatusCode.PERMISSION_DENIED, "SUBSCRIBE_DENIED")


async def test_a_caller_who_may_subscribe_to_nothing_is_permission_denied(secured: Secured) -> None:
    async with secured.as_("bob") as bob:
        stream = bob.events.Subscribe(event_service_pb2.SubscribeRequest())
        assert await refused(stream.read()) == (grpc.StatusCode.PERMISSION_DENIED, "SUBSCRIBE_DENIED")


async def test_the_topology_is_for_authenticated_callers(secured: Secured) -> None:
    async with secured.client() as anonymous:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(anonymous.channel)
        assert await refused(stub.GetTopology(cluster_service_pb2.GetTopologyRequest())) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "NO_CREDENTIALS",
        )
    async with secured.client(ALICE_KEY) as alice:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(alice.channel)
        response = await stub.GetTopology(cluster_service_pb2.GetTopologyRequest())
        assert response.topology.answered_by == secured.app.leases.member_id


# -- subscription groups ---------------------------------------------------------


def groups_of(client: Client) -> subscription_group_service_pb2_grpc.SubscriptionGroupServiceStub:
    return subscription_group_service_pb2_grpc.SubscriptionGroupServiceStub(client.channel)


async def consume_first(client: Client, group: str) -> subscription_group_service_pb2.ConsumeResponse:
    """The first message of a Consume stream of ``group`` (joined, or the refusal)."""
    call = groups_of(client).Consume()
    await call.write(
        subscription_group_service_pb2.ConsumeRequest(
            start=subscription_group_service_pb2.ConsumeStart(group=group, consumer="worker")
        )
    )
    try:
        response: subscription_group_service_pb2.ConsumeResponse = await call.read()
        return response
    finally:
        call.cancel()


async def test_groups_are_created_by_admins_and_consumed_with_consume_and_subscribe_grants(secured: Secured) -> None:
    groups = subscription_group_service_pb2
    async with secured.as_("alice") as alice:
        create = groups_of(alice).CreateGroup(groups.CreateGroupRequest(name="tellers"))
        assert await refused(create) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED")
    async with secured.as_("root") as root:
        accounts = groups.GroupFilter(aggregate_types=["Account"])
        await groups_of(root).CreateGroup(groups.CreateGroupRequest(name="tellers", filter=accounts))
        await groups_of(root).CreateGroup(groups.CreateGroupRequest(name="everything"))
        replay = groups_of(root).ReplayParked(groups.ReplayParkedRequest(group="tellers"))
        assert (await replay).replaying == 0
    async with secured.as_("alice") as alice:
        # Alice may subscribe to accounts, not to boxes: a group of every
        # type is not hers to consume (nor to see), one of accounts is.
        assert (await consume_first(alice, "tellers")).joined.consumer.startswith("worker#")
        assert await refused(consume_first(alice, "everything")) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "SUBSCRIBE_DENIED",
        )
        listed = await groups_of(alice).ListGroups(groups.ListGroupsRequest())
        assert [g.name for g in listed.groups] == ["tellers"]
        parked = groups_of(alice).ListParked(groups.ListParkedRequest(group="everything"))
        assert await refused(parked) == (grpc.StatusCode.PERMISSION_DENIED, "SUBSCRIBE_DENIED")
        replay = groups_of(alice).ReplayParked(groups.ReplayParkedRequest(group="tellers"))
        assert await refused(replay) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED")
    async with secured.as_("bob") as bob:  # granted no consume at all
        assert await refused(consume_first(bob, "tellers")) == (grpc.StatusCode.PERMISSION_DENIED, "CONSUME_DENIED")


async def test_a_group_of_every_type_takes_the_star_grant_not_every_declared_type_by_name(tmp_path: Path) -> None:
    """A group that names no type delivers every type the log holds, a
    retired plugin's too: a principal granted each declared type by name
    would receive types it was never granted."""
    groups = subscription_group_service_pb2
    named = (
        POLICY
        + """
[roles.each_by_name]
subscribe = [{names}]
consume = ["*"]

[roles.everything]
subscribe = ["*"]
consume = ["*"]

[principals."carol"]
roles = ["each_by_name"]

[principals."dave"]
roles = ["everything"]
"""
    )
    async with secured_server(tmp_path) as probe:
        declared = sorted(a.name for a in probe.app.registry.aggregates)
    policy = named.replace("{names}", ", ".join(f'"{name}"' for name in declared))
    async with secured_server(tmp_path, policy=policy) as server:
        async with server.as_("root") as root:
            await groups_of(root).CreateGroup(groups.CreateGroupRequest(name="everything"))
            accounts = groups.GroupFilter(aggregate_types=declared)
            await groups_of(root).CreateGroup(groups.CreateGroupRequest(name="declared", filter=accounts))
        async with server.as_("carol") as carol:
            assert await refused(consume_first(carol, "everything")) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "SUBSCRIBE_DENIED",
            )
            assert (await consume_first(carol, "declared")).joined.consumer.startswith("worker#")
            listed = await groups_of(carol).ListGroups(groups.ListGroupsRequest())
            assert [g.name for g in listed.groups] == ["declared"]
            # Not one it may consume: as for any caller short of "*", a missing group is refused alike.
            assert (await refusal_of(consume_first(carol, "nothing")))[:2] == (
                grpc.StatusCode.PERMISSION_DENIED,
                "SUBSCRIBE_DENIED",
            )
        async with server.as_("dave") as dave:
            assert (await consume_first(dave, "everything")).joined.consumer.startswith("worker#")
            assert (await refusal_of(consume_first(dave, "nothing")))[:2] == (
                grpc.StatusCode.NOT_FOUND,
                "GROUP_NOT_FOUND",
            )


async def refusal_of(call: object) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, raised.value.details() or "", dict(details.metadata)


async def test_a_group_that_does_not_exist_is_refused_as_one_the_caller_may_not_consume(secured: Secured) -> None:
    """Otherwise GROUP_NOT_FOUND would tell a caller which group names
    exist, and the type SUBSCRIBE_DENIED named which types a group reads."""
    groups = subscription_group_service_pb2
    async with secured.as_("root") as root:
        await groups_of(root).CreateGroup(groups.CreateGroupRequest(name="everything"))
    async with secured.as_("alice") as alice:
        for ask in (
            lambda group: consume_first(alice, group),
            lambda group: groups_of(alice).ListParked(groups.ListParkedRequest(group=group)),
        ):
            existing = await refusal_of(ask("everything"))
            missing = await refusal_of(ask("nothing"))
            assert existing[:2] == (grpc.StatusCode.PERMISSION_DENIED, "SUBSCRIBE_DENIED")
            assert missing == (
                existing[0],
                existing[1],
                existing[2].replace("everything", "nothing"),
                {**existing[3], "group": "nothing"},
            )
            assert "Box" not in existing[2] and "Box" not in existing[3].values()


# -- command streams in pages -------------------------------------------------


async def read_pages(call: Any) -> list[command_service_pb2.SubmitStreamResponse]:
    return [answer async for page in call for answer in page.results]


async def test_a_paged_command_stream_without_credentials_is_unauthenticated_and_writes_nothing(
    secured: Secured,
) -> None:
    before = await at_rest(secured.store)
    page = command_service_pb2.SubmitPage(
        requests=[command_service_pb2.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="ann")))]
    )
    async with secured.client() as anonymous:
        outcome = await refused(
            asking_again_if_lost(lambda: read_pages(anonymous.commands.SubmitStreamPages(iter([page]))))
        )
    assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "NO_CREDENTIALS")
    assert list((await at_rest(secured.store)).changes_since(before)) == ["refusals"]


async def test_each_command_of_a_page_is_authorized_on_its_own(secured: Secured) -> None:
    page = command_service_pb2.SubmitPage(
        requests=[
            command_service_pb2.SubmitRequest(command=command("box-1", box_pb2.CreateBox(name="x"), user_id="")),
            command_service_pb2.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="ann"), user_id="")),
        ]
    )
    async with secured.as_("alice") as alice:
        denied, opened = await read_pages(alice.commands.SubmitStreamPages(iter([page])))
    assert (denied.error.code, denied.error.reason) == (grpc.StatusCode.PERMISSION_DENIED.value[0], "SUBMIT_DENIED")
    assert opened.ok.version == 1
    assert await versions(secured, "box-1") == []
