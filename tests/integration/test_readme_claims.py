"""README.md, claim by claim, where no other test asserted the claim (the
Python example: tests/integration/test_readme.py; the settings table and
`make run`: tests/unit/test_deployment_claims.py; links:
tests/unit/test_docs.py): the tour run as printed against a real server
process, a real socket for the refusals, the suite's PostgreSQL and SQLite
files read from underneath the store, and the repository's own files for
the layout and the tools.

- the tour: each command of its shell block run as printed (the
  `chronicle` script of the venv), the refusal's first line exactly as the
  comment shows it, `read` one JSON line per event, `get` the state; the
  events in `./data/chronicle.db` by default, kept across a restart (a
  second `OpenAccount` refused `ALREADY_EXISTS ACCOUNT_ALREADY_OPEN`), and
  `--database-url memory://` keeping nothing;
- an unknown command type is INVALID_ARGUMENT with a BadRequest naming the
  field (`…payload.type_url`), on Submit, SubmitBatch and SubmitStream (it
  carried none: fixed);
- versions: the database itself refuses a second event at an aggregate's
  version (unique `(aggregate_id, version)`), on SQLite and PostgreSQL;
- the schema is created at start-up by several replicas at once on an
  empty PostgreSQL database, each migration applied once;
- the API table lists every RPC of every `chronicle.v1` service (it left
  out AdminService's deletion, export and import, ReactionService and
  SubscriptionGroupService: corrected), and the layout's protos row names
  those services;
- the layout: every folder and file it names is there, each example domain
  with its proto package and its tests, and `chronicle/` is generated, not
  in git;
- every `make` target and `chronicle` command the README names exists, and
  the targets do what it says: `make test` runs the Node.js example's test
  and installs the browser, `make lint` runs ruff, mypy, import-linter and
  buf (from npm, comments required), `make lock` writes constraints.txt,
  `make soak` runs the soak, `make bench-scale` takes `GROWTH_ARGS` and
  measures at 0, 1 M and 10 M events on PostgreSQL and SQLite, the soak
  runs 64 clients; CI's `.ci/run` calls `make lint`, the Dockerfile check
  and `make test`, and none of the targets "not in CI"."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import re
import shlex
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import any_pb2

import chronicle.v1
from chronicle.v1 import command_pb2, command_service_pb2, event_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.cli import build_parser
from service.plugins.discovery import ENTRY_POINT_GROUP
from service.settings import DEFAULT_DATABASE_URL
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.postgres.migrations import known_migrations
from service.store.sqlite import SqliteStore
from service.store_contract.records import new_event
from tests.soak import test_soak as soak
from tests.support.grpc_client import command, details_of, running_server
from tests.support.processes import ServerProcess, server_process

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHRONICLE = Path(sys.executable).parent / "chronicle"  # the venv's script, as the tour types it


def section(title: str) -> str:
    """The README's section under ``## title``, up to the next one."""
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and rule left out)."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    body = [row for row in rows if len(row) > 1 and not all(cell and set(cell) <= set("-:") for cell in row)]
    return body[1:]  # the header


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- the tour -----------------------------------------------------------------------------


def tour() -> list[tuple[list[str], str]]:
    """The shell block after "From another terminal": each command's
    arguments after `.venv/bin/chronicle`, with the output its comment lines
    show, one line each ("" when none)."""
    text = README.read_text()
    block = text.split("From another terminal:\n\n```sh\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[list[str], str]] = []
    for line in block.splitlines():
        if line.startswith("# "):
            arguments, shown = steps[-1]
            steps[-1] = (arguments, "\n".join(filter(None, (shown, line.removeprefix("# ")))))
        else:
            program, *arguments = shlex.split(line, comments=True)
            assert program == ".venv/bin/chronicle", line
            steps.append((arguments, ""))
    return steps


def typed(*arguments: str, server: ServerProcess) -> subprocess.CompletedProcess[str]:
    """The venv's `chronicle` script, as a user types it, on ``server``."""
    assert CHRONICLE.exists(), f"{CHRONICLE}: no `chronicle` script beside the interpreter"
    return subprocess.run(
        [str(CHRONICLE), *arguments, "--server", server.address], capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_the_tour_runs_as_printed_and_the_events_stay_in_data_across_a_restart(tmp_path: Path) -> None:
    steps = tour()
    assert [arguments[0] for arguments, _ in steps] == ["submit", "submit", "submit", "read", "get"]
    with server_process(DEFAULT_DATABASE_URL, cwd=tmp_path) as server:
        ran = [typed(*arguments, server=server) for arguments, _ in steps]
    opened, deposited, withdrawn, read, got = ran
    assert [r.returncode for r in (opened, deposited, read, got)] == [0] * 4, [r.stderr for r in ran]
    (refusal,) = [shown for _, shown in steps if shown.startswith("error:")]
    assert withdrawn.returncode == 1
    assert withdrawn.stderr.splitlines() == refusal.splitlines()  # its metadata on a line of its own
    events = [json.loads(line) for line in read.stdout.splitlines()]  # "the events, one JSON line each"
    assert [e["event_type"] for e in events] == ["bank.v1.AccountOpened", "bank.v1.MoneyDeposited"]
    state = json.loads(got.stdout)  # "the current state"
    assert (state["version"], state["state"]["owner"], state["state"]["balance"]) == (2, "ann", "100")
    # "The events stay in `./data/chronicle.db` across restarts, so a second
    # `OpenAccount` of `acc-1` is refused (`ALREADY_EXISTS ACCOUNT_ALREADY_OPEN`)"
    ((where, refused),) = re.findall(
        r"The events stay in `([^`]+)` across restarts, so a second `OpenAccount` of `acc-1` is refused \(`([^`]+)`\)",
        " ".join(README.read_text().split()),
    )
    assert (tmp_path / where).is_file()
    with server_process(DEFAULT_DATABASE_URL, cwd=tmp_path) as server:
        again = typed(*steps[0][0], server=server)
        kept = json.loads(typed("get", "acc-1", server=server).stdout)
    assert again.returncode == 1
    assert again.stderr.startswith(f"error: {refused}: ")
    assert kept["version"] == 2


@pytest.mark.slow
def test_with_the_memory_store_a_restart_keeps_nothing(tmp_path: Path) -> None:
    """`make run ARGS="--database-url memory://"` keeps nothing."""
    assert 'make run ARGS="--database-url memory://"` keeps nothing' in " ".join(README.read_text().split())
    opening = tour()[0][0]
    with server_process("memory://", cwd=tmp_path) as server:
        assert typed(*opening, server=server).returncode == 0
    with server_process("memory://", cwd=tmp_path) as server:
        gone = typed("get", "acc-1", server=server)
        reopened = typed(*opening, server=server)
    assert gone.returncode == 1 and gone.stderr.startswith("error: NOT_FOUND AGGREGATE_NOT_FOUND: ")
    assert reopened.returncode == 0
    assert list(tmp_path.iterdir()) == []  # no file written


# -- an unknown command type names its field ----------------------------------------------


def unknown_type(aggregate_id: str) -> command_pb2.Command:
    built = command(aggregate_id, bank.OpenAccount(owner="ann"))
    built.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/nope.v1.Nope", value=b""))
    return built


async def test_an_unknown_command_type_is_invalid_argument_with_a_bad_request_naming_the_field() -> None:
    """ "unknown types, malformed payloads and bad ids are INVALID_ARGUMENT
    with a google.rpc.BadRequest naming the field": an unknown type named
    none (malformed payloads and bad ids: tests/integration/test_grpc_api.py)."""
    async with running_server(MemoryStore()) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as submitted:
            await client.submit(unknown_type("acc-1"))
        batch = command_service_pb2.SubmitBatchRequest(
            commands=[command("acc-1", bank.OpenAccount(owner="ann")), unknown_type("acc-1")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as batched:
            await client.commands.SubmitBatch(batch, timeout=30)
        requests = iter([command_service_pb2.SubmitRequest(command=unknown_type("acc-1"))])
        (streamed,) = [answer async for answer in client.commands.SubmitStream(requests, timeout=30)]
    submitted_details, batched_details = details_of(submitted.value), details_of(batched.value)
    assert (submitted_details.code, submitted_details.reason, submitted_details.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_COMMAND_TYPE",
        ["command.payload.type_url"],
    )
    assert submitted_details.metadata == {"command_type": "nope.v1.Nope"}
    assert (batched_details.reason, batched_details.field_violations) == (
        "UNKNOWN_COMMAND_TYPE",
        ["commands[1].payload.type_url"],
    )
    assert (streamed.error.reason, [v.field for v in streamed.error.field_violations]) == (
        "UNKNOWN_COMMAND_TYPE",
        ["command.payload.type_url"],
    )


# -- versions and the schema, enforced by the database ------------------------------------


@contextmanager
def refused_as_a_second_event_at_its_version() -> Iterator[None]:
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)) as raised:
        yield
    if isinstance(raised.value, psycopg.errors.UniqueViolation):
        assert raised.value.diag.constraint_name == "events_aggregate_version_key"
    else:
        assert str(raised.value) == "UNIQUE constraint failed: events.aggregate_id, events.version"


def copy_event(conn: sqlite3.Connection | psycopg.Connection[tuple[object, ...]], table: str, *, bump: int) -> None:
    """A copy of ``acc-1``'s first event written past the store, as another
    writer would: a new position and event id, its version ``bump`` further on."""
    new_id = "gen_random_uuid()" if table.startswith("chronicle.") else f"event_id || '-copy-{bump}'"
    for statement in (
        f"CREATE TEMP TABLE copied AS SELECT * FROM {table} WHERE aggregate_id = 'acc-1' AND version = 1",
        f"UPDATE copied SET position = position + {100 + bump}, event_id = {new_id}, version = version + {bump}",
        f"INSERT INTO {table} SELECT * FROM copied",
        "DROP TABLE copied",
    ):
        conn.execute(statement)


async def test_on_sqlite_the_database_itself_refuses_a_second_event_at_a_version(tmp_path: Path) -> None:
    """ "the store enforces them (unique (aggregate_id, version)), so
    concurrent writers cannot both win": even a writer that goes past
    Chronicle's own checks."""
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        await store.append("acc-1", [new_event()], 0)
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "events.db") as conn:
        copy_event(conn, "events", bump=1)  # at the next version: the copy itself is a row the table takes
        with refused_as_a_second_event_at_its_version():
            copy_event(conn, "events", bump=0)


@pytest.mark.postgres
async def test_on_postgresql_the_database_itself_refuses_a_second_event_at_a_version(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        await store.append("acc-1", [new_event()], 0)
    finally:
        await store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        copy_event(conn, "chronicle.events", bump=1)
        with refused_as_a_second_event_at_its_version():
            copy_event(conn, "chronicle.events", bump=0)


@pytest.mark.postgres
async def test_replicas_starting_together_on_an_empty_database_create_the_schema_once(postgres_url: str) -> None:
    """ "The schema (chronicle.* tables) is created or migrated at start-up,
    safely from several replicas at once" (migrated from an old schema:
    tests/integration/test_migrations_over_data.py)."""
    stores = [PostgresStore(postgres_url, pool_size=1) for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        for store in stores:
            await store.ping()
        appended = await stores[3].append("acc-1", [new_event()], 0)
    finally:
        for store in stores:
            await store.close()
    with psycopg.connect(postgres_url) as conn:
        applied = conn.execute("SELECT version FROM chronicle.schema_migrations ORDER BY version").fetchall()
    assert [version for (version,) in applied] == [m.version for m in known_migrations()]
    assert [e.version for e in appended] == [1]


# -- the API, the layout ------------------------------------------------------------------


def chronicle_services() -> dict[str, list[str]]:
    """Every service of the chronicle.v1 package, with its RPCs."""
    services: dict[str, list[str]] = {}
    for module in pkgutil.iter_modules(chronicle.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"chronicle.v1.{module.name}").DESCRIPTOR
            for name, service in descriptor.services_by_name.items():
                services[name] = [method.name for method in service.methods]
    return services


def test_the_api_table_lists_every_rpc_of_every_service() -> None:
    """ "Every RPC, by service"."""
    listed: dict[str, list[str]] = {}
    service = ""
    for cells in table_rows(section("The API")):
        service = (backticked(cells[0]) or [service])[0]
        listed.setdefault(service, []).extend(backticked(cells[1]))
    services = chronicle_services()
    assert {name: sorted(rpcs) for name, rpcs in listed.items()} == {
        name: sorted(rpcs) for name, rpcs in services.items()
    }
    assert len(services) == 7


def test_the_layout_names_folders_and_files_that_are_there() -> None:
    missing = []
    for cells in table_rows(section("Layout")):
        folders = [ROOT / name for name in backticked(cells[0])]
        missing += [str(folder) for folder in folders if not folder.exists()]
        for name in re.findall(r"`([\w./-]+(?:\.py|/))`", cells[1]):
            places = [ROOT / name, *(folder / name for folder in folders)]
            nested = [found for folder in folders if folder.is_dir() for found in folder.rglob(name.rstrip("/"))]
            if not any(place.exists() for place in places) and not nested:
                missing.append(f"{cells[0]}: {name}")
    assert missing == []


def test_the_layout_s_protos_and_example_domains_are_as_it_says() -> None:
    rows = {backticked(cells[0])[0]: cells[1] for cells in table_rows(section("Layout"))}
    named = set(backticked(rows["protos/chronicle/v1/"]))
    assert named - {"Command", "Event"} == set(chronicle_services())
    assert {"Command", "Event"} == {command_pb2.Command.DESCRIPTOR.name, event_pb2.Event.DESCRIPTOR.name}
    domains = re.findall(r"`(\w+)` \(`(\w+\.v1)`", rows["domain_plugins/"])
    assert [name for name, _ in domains] == ["bank_account", "box", "users"]
    for name, package in domains:
        proto_folder = ROOT / "domain_plugins" / name / "protos" / Path(*package.split("."))
        assert any(f"package {package};" in proto.read_text() for proto in proto_folder.glob("*.proto")), name
        assert (ROOT / "domain_plugins" / name / "tests").is_dir(), name
    # chronicle/: "generated Python code for the public protos (make protos; not in git)"
    assert "/chronicle/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "tools/gen_protos.py" in "\n".join(makefile_rule("chronicle/.generated")[1])
    # plugins: "discovery (entry points chronicle.plugins, …)", where the example domains are
    assert "`chronicle.plugins`" in rows["service/plugins/"] and ENTRY_POINT_GROUP == "chronicle.plugins"
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert sorted(entry_points[ENTRY_POINT_GROUP]) == [name for name, _ in domains]


# -- make targets, commands, CI -----------------------------------------------------------


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w.-]*):(?!=)", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def makefile_rule(target: str) -> tuple[list[str], list[str]]:
    """A Makefile rule's prerequisites and recipe lines."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(target + ":"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return lines[start].split(":", 1)[1].split(), recipe


def test_every_make_target_and_chronicle_command_the_readme_names_exists() -> None:
    text = README.read_text()
    targets = set(re.findall(r"\bmake ([a-z][a-z-]*)", text))
    assert {"run", "test", "lint", "protos", "lock", "soak", "bench", "scale", "bench-scale", "profile"} <= targets
    assert sorted(targets - makefile_targets()) == []
    commands = set(re.findall(r"(?:bin/|`)chronicle ([a-z][a-z-]*)", text))
    assert {"submit", "read", "get", "serve", "apikey", "new-plugin"} <= commands
    (subcommands,) = [action for action in build_parser()._actions if action.dest == "command"]
    assert isinstance(subcommands.choices, dict)
    assert sorted(commands - set(subcommands.choices)) == []


def test_the_make_targets_and_ci_do_what_the_readme_says(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(README.read_text().split())
    test_needs, test_runs = makefile_rule("test")
    assert "browser" in test_needs and any("test-node" in line for line in test_runs)
    assert "(which also runs the Node.js example's test, `make test-node`)" in text
    _, browser = makefile_rule("browser")
    assert "command -v chromedriver" in browser[0] and "install -y -qq chromium chromium-driver" in browser[0]
    lint_needs, lint = makefile_rule("lint")
    assert lint == ["$(BIN)/ruff check .", "$(BIN)/ruff format --check .", "$(BIN)/mypy", "$(BIN)/lint-imports"]
    _, api = makefile_rule("lint-api")
    assert "lint-api" in lint_needs and api == ["node_modules/.bin/buf lint", "tools/check_api_breaking.sh"]
    assert "@bufbuild/buf" in json.loads((ROOT / "package.json").read_text())["devDependencies"]
    assert "COMMENTS" in (ROOT / "buf.yaml").read_text().split("\nlint:\n", 1)[1].split("\nbreaking:", 1)[0]
    assert any(line.endswith("> constraints.txt") for line in makefile_rule("lock")[1])
    assert any("-m soak" in line and "tests/soak" in line for line in makefile_rule("soak")[1])
    # CI: ".ci/run, which calls make lint, tools/check_dockerfile_steps.sh … and make test"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert {"make lint", "bash tools/check_dockerfile_steps.sh", "make test"} <= set(ci)
    assert [line for line in ci if re.search(r"\bmake (soak|bench|scale|bench-scale|profile)\b", line)] == []
    # `make soak` (not in CI: minutes) runs 64 clients against two servers …
    assert "`make soak` (not in CI: minutes) runs 64 clients against two servers" in text
    assert soak.CLIENTS == 64
    # `make bench-scale` … `GROWTH_ARGS=--sizes=0,1000000` … at 0, 1 M and 10 M events on PostgreSQL and SQLite
    (growth_args,) = re.findall(r"`GROWTH_ARGS=([^`]+)`", text)
    assert makefile_rule("bench-scale")[1][-1] == "$(BIN)/python -m bench.growth $(GROWTH_ARGS)"
    from bench import growth

    with pytest.raises(SystemExit) as helped:
        growth.main(["--help"])
    assert helped.value.code == 0 and "--sizes" in capsys.readouterr().out
    assert growth_args.split("=", 1)[0] == "--sizes"
    assert [int(size) for size in growth_args.split("=", 1)[1].split(",")] == growth.SIZES[:2]
    assert "at 0, 1 M and 10 M events on PostgreSQL and SQLite" in text
    assert (growth.SIZES, growth.STORES) == ([0, 1_000_000, 10_000_000], ["postgresql", "sqlite"])
