"""A conversion keeps uniqueness: a users application written with the
real ``eventsourcing`` library (PyPI), converted with a mapping that gives
the claims (``ChronicleClaim``) and imported through the command line into
SQLite and PostgreSQL, then served by a real server process, refuses the
registration of an imported user's address, as if the users had registered
through Chronicle (docs/migration.md, "Uniqueness")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from domain_plugins.users.domain import EMAIL_SCOPE
from service.app import build_registry
from service.errors import InvalidInput
from service.transfer.eventsourcing import ChronicleClaim, ChronicleEvent, EventsourcingEvent, eventsourcing_export
from tests.support.eventsourcing_bank import environment
from tests.support.eventsourcing_users import Users, to_chronicle
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.import_claims import chronicle, empty_store, refused_not_unique, register
from tests.support.postgres import Cluster
from tests.support.processes import server_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SCHEMA = "legacy"
MAPPING = "tests.support.eventsourcing_users:to_chronicle"


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request: pytest.FixtureRequest, pg_cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """An empty Chronicle store of each kind the migration may go to."""
    with empty_store(request.param, pg_cluster, tmp_path) as url:
        yield url


def legacy_users(postgres_url: str) -> tuple[Users, dict[str, UUID]]:
    """Ann, and Bob who moved from bob@ to robert@ (freeing bob@)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    app = Users(env=environment(postgres_url, SCHEMA))
    ids = {"ann": app.register("Ann@Example.com", "Ann"), "bob": app.register("bob@example.com", "Bob")}
    app.change_email(ids["bob"], "robert@example.com")
    return app, ids


def test_converted_users_keep_their_addresses_unique(postgres_url: str, target_url: str, tmp_path: Path) -> None:
    """The walkthrough's reproduction: before, the import said
    "claims_written": 0 and a second lee@example.com was registered."""
    legacy_users(postgres_url)
    out = tmp_path / "legacy.chronicle"
    converted = chronicle(
        "convert-eventsourcing", str(out), "--from-url", postgres_url, "--schema", SCHEMA,
        "--table", "users_events", "--mapping", MAPPING,
    )  # fmt: skip
    assert json.loads(converted.stdout)["claims"] == 2  # ann@, robert@ (bob@ given up)
    imported = json.loads(chronicle("import", str(out), "--database-url", target_url).stdout)
    # The plugin declares its claims too: derived, they are the mapping's (found held, nothing released).
    counts = ("events_written", "claims_written", "claims_derived", "claims_released")
    assert tuple(imported[count] for count in counts) == (3, 2, 2, 0)
    with server_process(target_url) as server:
        assert refused_not_unique(register(server.address, "user-impostor", "ann@example.com"))
        assert refused_not_unique(register(server.address, "user-impostor", "ROBERT@example.com"))
        # The address Bob gave up in the old application is free, as a ChangeEmail would have left it.
        assert register(server.address, "user-new-bob", "bob@example.com").returncode == 0


def legacy_twins(postgres_url: str) -> UUID:
    """The legacy users, and a second user of Ann's address: the old
    application never refused it. The second user's id."""
    app = legacy_users(postgres_url)[0]
    return app.register("ann@example.com", "Ann again")


async def test_two_legacy_users_holding_one_address_are_refused_at_conversion(postgres_url: str) -> None:
    twin = legacy_twins(postgres_url)
    stream = eventsourcing_export(
        postgres_url, table="users_events", schema=SCHEMA, mapping=to_chronicle, registry=build_registry(TEST_SETTINGS)
    )
    with pytest.raises(InvalidInput) as refused:
        _ = [record async for record in stream]
    assert (refused.value.reason, refused.value.metadata["import_reason"]) == ("BAD_MAPPING", "CLAIM_HELD")
    assert refused.value.metadata["aggregate_id"] == str(twin)
    assert refused.value.metadata["scope"] == EMAIL_SCOPE
    assert "ann@example.com" not in refused.value.message  # personal data stays out of refusals


def test_the_command_line_refuses_them_and_writes_no_file(postgres_url: str, tmp_path: Path) -> None:
    legacy_twins(postgres_url)
    out = tmp_path / "legacy.chronicle"
    done = chronicle(
        "convert-eventsourcing", str(out), "--from-url", postgres_url, "--schema", SCHEMA,
        "--table", "users_events", "--mapping", MAPPING, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "error: BAD_MAPPING:" in done.stderr and "CLAIM_HELD" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no file, not even a .partial


@pytest.mark.parametrize(
    ("claim", "problem"),
    [(ChronicleClaim("", "x"), "scope"), (ChronicleClaim(EMAIL_SCOPE, "a\x00b"), "value"), ("users.email", "each")],
)
async def test_a_claim_no_command_could_take_is_refused_at_conversion(
    postgres_url: str, claim: object, problem: str
) -> None:
    legacy_users(postgres_url)

    def mapping(event: EventsourcingEvent) -> ChronicleEvent | None:
        mapped = to_chronicle(event)
        return None if mapped is None else ChronicleEvent("User", mapped.message, claims=[claim])  # type: ignore[list-item]

    stream = eventsourcing_export(postgres_url, table="users_events", schema=SCHEMA, mapping=mapping)
    with pytest.raises(InvalidInput) as refused:
        _ = [record async for record in stream]
    assert refused.value.reason == "BAD_MAPPING"
    assert problem in refused.value.message
