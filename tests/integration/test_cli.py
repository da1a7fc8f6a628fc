"""The server as a process and the CLI as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.support.processes import Replica, cli, free_port, run_healthcheck, server_process
from tests.support.security import POLICY, Authority, JwtIssuer, write

pytestmark = pytest.mark.slow


def test_a_user_opens_deposits_reads_and_gets_an_account(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        first_line = server.process.stdout.readline() if server.process.stdout else ""
        assert f"Chronicle serving gRPC on {server.address}" in first_line
        opened = json.loads(
            cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address).stdout
        )
        assert opened["version"] == 1
        assert opened["events"][0]["payload"] == {"@type": "bank.v1.AccountOpened", "owner": "ann"}
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 40}', server=server.address)
        events = [json.loads(line) for line in cli("read", "acc-1", server=server.address).stdout.splitlines()]
        assert [e["event_type"] for e in events] == ["bank.v1.AccountOpened", "bank.v1.MoneyDeposited"]
        state = json.loads(cli("get", "acc-1", server=server.address).stdout)
        assert state["state"] == {"@type": "bank.v1.Account", "owner": "ann", "balance": "40"}


def test_a_user_tries_a_command_dry_and_looks_into_the_past(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        dry = json.loads(
            cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 5}', "--dry-run", server=server.address).stdout
        )
        assert (dry["dry_run"], dry["version"]) == (True, 2)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 40}', server=server.address)
        newest = [
            json.loads(line)
            for line in cli("read", "acc-1", "--backwards", "--limit", "1", server=server.address).stdout.splitlines()
        ]
        assert [(e["version"], e["payload"]["amount"]) for e in newest] == [("2", "40")]
        then = json.loads(cli("get", "acc-1", "--at-version", "1", server=server.address).stdout)
        assert (then["version"], then["state"].get("balance")) == (1, None)
        before = cli("get", "acc-1", "--at-time", "2000-01-01T00:00:00Z", server=server.address, check=False)
        assert "NOT_FOUND AGGREGATE_NOT_FOUND" in before.stderr


def test_a_refused_command_exits_one_with_the_code_and_reason(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        refused = cli("submit", "acc-1", "bank.v1.Withdraw", '{"amount": 5}', server=server.address, check=False)
        assert refused.returncode == 1
        assert "FAILED_PRECONDITION INSUFFICIENT_FUNDS" in refused.stderr
        misspelt = cli("submit", "acc-1", "bank.v1.Deposit", '{"amout": 5}', server=server.address, check=False)
    assert misspelt.returncode == 2  # the input was wrong: nothing was sent
    assert misspelt.stderr.startswith('error: the payload does not fit bank.v1.Deposit: Message type "bank.v1.Deposit"')
    assert '"amout"' in misspelt.stderr
    assert misspelt.stderr.count("\n") == 1


def test_a_command_or_event_type_the_server_does_not_know_is_a_usage_error_saying_what_to_give(
    tmp_path: Path,
) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        short = cli("submit", "acc-1", "Deposit", '{"amount": 5}', server=server.address, check=False)
        # ReadAggregate matches nothing with a wrong name: the read printed
        # nothing and exited 0, as if the account had no deposits.
        unfiltered = cli("read", "acc-1", "--type", "MoneyDeposited", server=server.address, check=False)
        known = cli("read", "acc-1", "--type", "bank.v1.AccountOpened", server=server.address)
    assert (short.returncode, short.stdout) == (2, "")
    assert short.stderr == (
        "error: the server knows no message type 'Deposit'\n"
        "  give the command message's full name, its package included (bank.v1.Deposit, not Deposit);"
        " the server lists its command types when it starts, and `chronicle plugins` those of the plugins"
        " this host would load\n"
    )
    assert (unfiltered.returncode, unfiltered.stdout) == (2, "")
    assert unfiltered.stderr == (
        "error: --type MoneyDeposited: the server knows no message type 'MoneyDeposited'\n"
        "  give the event message's full name, its package included (bank.v1.MoneyDeposited)\n"
    )
    assert [json.loads(line)["event_type"] for line in known.stdout.splitlines()] == ["bank.v1.AccountOpened"]


def test_a_submit_whose_deadline_passed_names_its_command_id_and_resending_it_runs_it_once(tmp_path: Path) -> None:
    extra = ["--no-discover-plugins", "--plugin", "tests.support.plugins:slow"]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        late = cli(
            "submit", "s-1", "box.v1.RenameBox", '{"name": "a"}', "--timeout", "0.2", server=server.address, check=False
        )
        assert late.returncode == 1
        assert late.stderr.startswith("error: DEADLINE_EXCEEDED")
        hint = late.stderr.splitlines()[-1]
        assert hint.startswith("  the command may have run: send it again with --command-id ")
        command_id = hint.split("--command-id ")[1].split()[0]
        assert str(uuid.UUID(command_id)) == command_id

        again = cli(
            "submit", "s-1", "box.v1.RenameBox", '{"name": "a"}', "--command-id", command_id, server=server.address
        )
        answer = json.loads(again.stdout)
        # It had run (the handler outlived the deadline): answered from its record, not run twice.
        assert (answer["command_id"], answer["version"], answer["replayed"]) == (command_id, 1, True)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--limit", "-1", "argument --limit: must be 0 or more, got -1"),
        ("--from-version", "-3", "argument --from-version: must be 0 or more, got -3"),
        ("--timeout", "-1", "argument --timeout: must be a number of seconds above 0, got -1"),
        ("--timeout", "0", "argument --timeout: must be a number of seconds above 0, got 0"),
    ],
)
def test_a_negative_number_is_refused_naming_its_option(option: str, value: str, says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "read", "acc-1", option, value, "--server", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"chronicle read: error: {says}"


def test_the_same_command_id_twice_is_replayed(tmp_path: Path) -> None:
    command_id = str(uuid.uuid4())
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        args = ("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', "--command-id", command_id)
        first = json.loads(cli(*args, server=server.address).stdout)
        second = json.loads(cli(*args, server=server.address).stdout)
        assert (first["replayed"], second["replayed"]) == (False, True)
        assert first["events"] == second["events"]


def test_events_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    with server_process(url) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        assert server.stop(signal.SIGTERM) == 0
    with server_process(url) as server:
        state = json.loads(cli("get", "acc-1", server=server.address).stdout)
        assert state["version"] == 1


def test_health_command_exits_zero_when_serving(tmp_path: Path) -> None:
    with server_process("memory://") as server:
        result = cli("health", server=server.address)
        assert json.loads(result.stdout)["status"] == "SERVING"


def test_the_image_health_check_follows_the_listen_address() -> None:
    with server_process("memory://") as server:
        port = server.address.rpartition(":")[2]
        serving = run_healthcheck({"CHRONICLE_LISTEN": f"0.0.0.0:{port}"})  # as the image listens: everywhere
        elsewhere = run_healthcheck({"CHRONICLE_LISTEN": f"0.0.0.0:{free_port()}"})
    assert (serving.returncode, json.loads(serving.stdout)["status"]) == (0, "SERVING")
    assert elsewhere.returncode == 1
    assert elsewhere.stderr.startswith("error: UNAVAILABLE")


def test_plugins_lists_what_would_be_loaded() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "service", "plugins"], capture_output=True, text=True, check=True)
    plugins = {json.loads(line)["plugin"]: json.loads(line) for line in result.stdout.splitlines()}
    assert {"bank_account", "box"} <= set(plugins)
    account = plugins["bank_account"]["aggregates"][0]
    assert account["commands"]["bank.v1.Deposit"] == "deposit"
    assert account["events"]["bank.v1.MoneyDeposited"]["schema_version"] == 1
    assert account["sent_by_reactions"] == {}
    (transfer,) = [a for a in plugins["bank_account"]["aggregates"] if a["aggregate_type"] == "Transfer"]
    assert transfer["sent_by_reactions"] == {
        name: ["bank.transfers"]
        for name in ("bank.v1.CompleteTransfer", "bank.v1.FailTransfer", "bank.v1.RecordRefund")
    }


def test_the_audit_log_is_read_with_a_token_and_a_refusal_shows_its_reason(tmp_path: Path) -> None:
    from tests.support.security import POLICY, api_key_file, write

    keys = api_key_file(tmp_path / "keys.toml", [("chr_root-key-for-the-cli-test-000000", "root", ["operator"])])
    policy = write(tmp_path / "policy.toml", POLICY)
    extra = ["--auth", "--policy-file", policy, "--api-keys-file", keys]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        anonymous = cli("submit", "acc-1", "bank.v1.OpenAccount", "{}", server=server.address, check=False)
        assert "UNAUTHENTICATED NO_CREDENTIALS" in anonymous.stderr
        assert anonymous.stderr.splitlines()[1] == (
            "  this server has authentication on: give a token with --token TOKEN (env CHRONICLE_TOKEN)"
            " or --token-file FILE (env CHRONICLE_TOKEN_FILE)"
        )
        token = ["--token", "chr_root-key-for-the-cli-test-000000"]
        denied = cli("submit", "acc-1", "bank.v1.OpenAccount", "{}", *token, server=server.address, check=False)
        assert "PERMISSION_DENIED SUBMIT_DENIED" in denied.stderr
        entries = [
            json.loads(line)
            for line in cli("audit", "--outcome", "refused", *token, server=server.address).stdout.splitlines()
        ]
        by_type = cli("audit", "--command-type", "bank.v1.OpenAccount", *token, server=server.address)
    # --command-type keeps the entries of that command (or administrator's action) only.
    assert [json.loads(line)["command_type"] for line in by_type.stdout.splitlines()] == ["bank.v1.OpenAccount"]
    # The anonymous CLI was stopped at its reflection call (audited as such):
    # no command of it reached the service.
    denied_entry, anonymous_entry = entries
    assert (denied_entry["principal"], denied_entry["reason"], denied_entry["aggregate_id"]) == (
        "root",
        "SUBMIT_DENIED",
        "acc-1",
    )
    assert denied_entry["command_type"] == "bank.v1.OpenAccount"
    # A policy refusal is audited inside the command pipeline, with the
    # caller's address all the same, as the gate's own refusals are.
    assert denied_entry["peer"].startswith("ipv4:127.0.0.1:"), denied_entry
    assert anonymous_entry["peer"].startswith("ipv4:127.0.0.1:"), anonymous_entry
    assert (anonymous_entry["command_type"], anonymous_entry["reason"]) == (
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "NO_CREDENTIALS",
    )
    assert anonymous_entry["peer"].startswith("ipv")


def test_apikey_prints_a_key_and_its_hashed_entry() -> None:
    import hashlib
    import subprocess
    import sys
    import tomllib

    made = subprocess.run(
        [sys.executable, "-m", "service", "apikey", "alice", "--role", "teller"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    key = made.stderr.rsplit(" ", 1)[1].strip()
    (entry,) = tomllib.loads(made.stdout)["keys"]
    assert entry == {"principal": "alice", "sha256": hashlib.sha256(key.encode()).hexdigest(), "roles": ["teller"]}
    assert key not in made.stdout


def test_apikey_writes_the_tenant_it_is_given_and_refuses_a_bad_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    from service.security.credentials import ApiKeys

    def apikey(*tenant: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service", "apikey", "acme-app", "--role", "banker", *tenant]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    made = apikey("--tenant", "acme")
    assert made.returncode == 0
    key = made.stderr.rsplit(" ", 1)[1].strip()
    (tmp_path / "keys.toml").write_text(made.stdout)
    assert ApiKeys.load(tmp_path / "keys.toml").verify(key).tenant == "acme"  # the file it loads
    refused = apikey("--tenant", "ac:me")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "--tenant must not contain ':'" in refused.stderr
    assert "chr_" not in refused.stderr  # no key was made


def test_an_operator_forgets_an_aggregate_and_its_events_read_redacted(tmp_path: Path) -> None:
    from service.store.encryption import new_master_key
    from tests.support.security import write

    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    extra = ["--master-key-file", keys, "--anonymous-admin"]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        forgotten = json.loads(cli("forget", "acc-1", server=server.address).stdout)
        # The read model's documents that named it went with it, and are counted.
        deleted = [
            {
                "name": "bank.balances_by_owner",
                "process_states": 0,
                "parked_commands": 0,
                "documents": 2,
                "other_subjects": [],
                "other_subjects_omitted": 0,
                "other_subjects_withheld": 0,
            }
        ]
        assert forgotten.pop("forgotten_at").endswith("Z")  # when its key was erased: now
        assert forgotten == {"aggregate_id": "acc-1", "already_forgotten": False, "deleted": deleted}
        (event,) = [json.loads(line) for line in cli("read", "acc-1", server=server.address).stdout.splitlines()]
        refused = cli("get", "acc-1", server=server.address, check=False)
    assert (event["redacted"], event["payload"], event["event_type"]) == (True, None, "bank.v1.AccountOpened")
    assert "FAILED_PRECONDITION AGGREGATE_FORGOTTEN" in refused.stderr


def test_an_operator_lists_a_tenant_and_forgets_it_by_prefix_after_confirming_the_count(tmp_path: Path) -> None:
    """docs/security.md, "Tenant offboarding": list, forget by prefix (which
    first says how many match and does nothing), then with --confirm."""
    from service.store.encryption import new_master_key
    from tests.support.security import write

    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    extra = ["--master-key-file", keys, "--anonymous-admin"]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        for aggregate_id in ["acme:acc-1", "acme:acc-2", "acme2:acc-1"]:
            cli("submit", aggregate_id, "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        listed = cli("aggregates", "--prefix", "acme:", server=server.address).stdout.splitlines()
        unseparated = cli("forget", "--prefix", "acme", server=server.address, check=False)
        counted = cli("forget", "--prefix", "acme:", server=server.address, check=False)
        wrong = cli("forget", "--prefix", "acme:", "--confirm", "3", server=server.address, check=False)
        done = json.loads(cli("forget", "--prefix", "acme:", "--confirm", "2", server=server.address).stdout)
        after = [json.loads(line) for line in cli("aggregates", server=server.address).stdout.splitlines()]
    assert [json.loads(line) for line in listed] == [
        {
            "aggregate_id": f"acme:acc-{n}",
            "aggregate_type": "Account",
            "version": 1,
            "deleted": False,
            "has_key": True,
            "forgotten": False,
        }
        for n in (1, 2)
    ]
    assert unseparated.returncode == 1 and "INVALID_ARGUMENT PREFIX_NOT_SEPARATED" in unseparated.stderr
    assert counted.returncode == 2 and wrong.returncode == 2
    assert "chronicle forget --prefix acme: --confirm 2" in counted.stderr
    assert "(--confirm said 3): nothing was forgotten" in wrong.stderr
    assert (done["forgotten"], done["remaining"], done["not_encrypted"], done["without_key"]) == (2, 0, 0, 0)
    assert {a["aggregate_id"]: a["forgotten"] for a in after} == {
        "acme2:acc-1": False,
        "acme:acc-1": True,
        "acme:acc-2": True,
    }


def test_an_operator_rotates_the_master_key_with_rewrap_keys(tmp_path: Path) -> None:
    """As docs/security.md says: the new key first, the old one after it,
    rewrap-keys, then the old key removed; the events still read."""
    from service.store.encryption import new_master_key

    old, new = f"old:{new_master_key()}", f"new:{new_master_key()}"
    url, keys = f"sqlite:///{tmp_path}/events.db", tmp_path / "master.keys"
    extra = ["--master-key-file", str(keys), "--anonymous-admin"]
    keys.write_text(f"{old}\n")
    keys.chmod(0o600)
    with server_process(url, extra=extra) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
    keys.write_text(f"{new}\n{old}\n")
    with server_process(url, extra=extra) as server:
        first = json.loads(cli("rewrap-keys", server=server.address).stdout)
        again = json.loads(cli("rewrap-keys", server=server.address).stdout)
    assert first["rewrapped"] >= 1  # the account's key (and the read model's, if it ran)
    assert again == {"rewrapped": 0}
    keys.write_text(f"{new}\n")
    with server_process(url, extra=extra) as server:
        state = json.loads(cli("get", "acc-1", server=server.address).stdout)
    assert state["state"] == {"@type": "bank.v1.Account", "owner": "ann"}


def test_rewrap_keys_is_refused_to_non_admins_and_without_encryption(tmp_path: Path) -> None:
    from tests.support.security import POLICY, api_key_file, write

    alice, root = "chr_alice-key-for-the-cli-test-0000000", "chr_root-key-for-the-cli-test-00000000"
    keys = api_key_file(tmp_path / "keys.toml", [(alice, "alice", []), (root, "root", [])])
    extra = ["--auth", "--policy-file", write(tmp_path / "policy.toml", POLICY), "--api-keys-file", keys]
    with server_process("memory://", extra=extra) as server:
        denied = cli("rewrap-keys", "--token", alice, server=server.address, check=False)
        off = cli("rewrap-keys", "--token", root, server=server.address, check=False)
    assert (denied.returncode, off.returncode) == (1, 1)
    assert "PERMISSION_DENIED ADMIN_DENIED" in denied.stderr
    assert "FAILED_PRECONDITION ENCRYPTION_OFF" in off.stderr


def test_tail_prints_the_stream_and_resumes_after_a_position(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 3}', server=server.address)
        cli("submit", "box-1", "box.v1.CreateBox", '{"name": "b"}', server=server.address)
        everything = cli("tail", "--from", "0", "--until-caught-up", server=server.address).stdout.splitlines()
        assert [json.loads(line)["event_type"] for line in everything] == [
            "bank.v1.AccountOpened",
            "bank.v1.MoneyDeposited",
            "box.v1.BoxCreated",
        ]
        first_position = json.loads(everything[0])["position"]
        deposits = cli(
            "tail",
            "--from",
            str(first_position),
            "--type",
            "bank.v1.MoneyDeposited",
            "--until-caught-up",
            server=server.address,
        ).stdout.splitlines()
        assert [json.loads(line)["payload"]["amount"] for line in deposits] == ["3"]
        refused = cli("tail", "--from", "999", "--until-caught-up", server=server.address, check=False)
        assert refused.returncode == 1
        assert "INVALID_ARGUMENT POSITION_BEYOND_END" in refused.stderr


def test_projection_prints_progress_and_documents(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=["--poll-seconds", "0.1"]) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 12}', server=server.address)
        for _ in range(100):
            status = json.loads(cli("projection", "bank.balances_by_owner", server=server.address).stdout)
            if status["position"] == status["log_head"]:
                break
            time.sleep(0.1)
        document = json.loads(cli("projection", "bank.balances_by_owner", "owner:ann", server=server.address).stdout)
        assert document["document"] == {
            "@type": "bank.v1.OwnerBalance",
            "owner": "ann",
            "balance": "12",
            "account_ids": ["acc-1"],
        }
        missing = cli("projection", "bank.balances_by_owner", "owner:zed", server=server.address, check=False)
        assert "NOT_FOUND DOCUMENT_NOT_FOUND" in missing.stderr
        # No name: every projection the server runs, one line each, as `reaction` and `group` list theirs.
        listed = [json.loads(line) for line in cli("projection", server=server.address).stdout.splitlines()]
        assert [(entry["name"], entry["position"]) for entry in listed] == [
            ("bank.balances_by_owner", status["log_head"])
        ]


def test_projection_lists_documents_rebuilds_with_progress_and_lists_parked_events(tmp_path: Path) -> None:
    extra = ["--poll-seconds", "0.1", "--anonymous-admin"]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        for account, owner in (("acc-1", "ann"), ("acc-2", "anna"), ("acc-3", "bob")):
            cli("submit", account, "bank.v1.OpenAccount", json.dumps({"owner": owner}), server=server.address)
            cli("submit", account, "bank.v1.Deposit", '{"amount": 7}', server=server.address)
        rebuilt = cli("projection", "rebuild", "bank.balances_by_owner", server=server.address)
        # Not a terminal: plain lines, the last one saying where it got to.
        assert rebuilt.stderr.splitlines()[-1].startswith("rebuilding bank.balances_by_owner: rebuilt up to position")
        assert "\x1b" not in rebuilt.stderr
        assert json.loads(rebuilt.stdout)["position"] >= 6
        listed = cli(
            "projection",
            "documents",
            "bank.balances_by_owner",
            "--prefix",
            "owner:an",
            "--descending",
            server=server.address,
        )
        documents = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(d["key"], d["document"]["balance"]) for d in documents] == [("owner:anna", "7"), ("owner:ann", "7")]
        parked = cli("projection", "parked", "bank.balances_by_owner", server=server.address)
        assert parked.stdout == ""
        denied = cli("projection", "rebuild", "no.such", server=server.address, check=False)
        assert "NOT_FOUND PROJECTION_NOT_FOUND" in denied.stderr


def cli_into_a_closed_pipe(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    """``chronicle ARGS | head -0``: the reader closes its end before the first line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service", *args, "--server", server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the CLI has even connected: its first line meets no reader
    stderr = process.stderr.read()
    process.stderr.close()
    return subprocess.CompletedProcess(process.args, process.wait(30), "", stderr)


def test_output_into_a_pipe_closed_early_ends_quietly_like_a_unix_tool(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=["--anonymous-admin"]) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        for args in (("read", "acc-1"), ("audit",), ("tail", "--from", "0", "--until-caught-up")):
            closed = cli_into_a_closed_pipe(*args, server=server.address)
            # 141 = 128 + SIGPIPE: what a shell reports for `yes | head`; no traceback
            assert (args, closed.returncode, closed.stderr) == (args, 141, "")


def test_read_of_an_aggregate_with_no_events_says_not_found_and_exits_one_like_get(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        read = cli("read", "acc-9", server=server.address, check=False)
        get = cli("get", "acc-9", server=server.address, check=False)
        none_match = cli("read", "acc-1", "--type", "bank.v1.MoneyWithdrawn", server=server.address)
    assert (read.returncode, read.stdout) == (get.returncode, get.stdout) == (1, "")
    assert read.stderr == get.stderr
    assert read.stderr.startswith("error: NOT_FOUND AGGREGATE_NOT_FOUND: aggregate 'acc-9' has no events")
    # an aggregate that exists but has no event the filter wants is an empty answer, not an error
    assert (none_match.returncode, none_match.stdout) == (0, "")


# The CLI as a terminal runs it, Ctrl-C included: a suite started in the
# background by a shell inherits SIGINT ignored, and so would the tail (it
# then never saw the Ctrl-C), so the child takes Python's own handler back
# first. Not in a preexec_fn: that runs Python in the forked child before
# exec, which is unsafe beside gRPC's threads in this process (a tail ended
# before its first event once in a loaded suite).
WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " runpy.run_module('service', run_name='__main__', alter_sys=True)"
)


def test_ctrl_c_ends_a_tail_quietly_with_130(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        tail = subprocess.Popen(
            [sys.executable, "-c", WITH_CTRL_C, "tail", "--from", "0", "--server", server.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tail.stdout is not None and tail.stderr is not None
        try:
            line = tail.stdout.readline()
            if not line:  # seen once in a loaded suite: say how it ended
                pytest.fail(f"the tail ended before its first event: exit {tail.wait(10)}, {tail.stderr.read()!r}")
            assert json.loads(line)["aggregate_id"] == "acc-1"  # it follows the log now
            tail.send_signal(signal.SIGINT)
            assert (tail.wait(30), tail.stderr.read()) == (130, "")
        finally:
            tail.kill()
            tail.wait(10)
            tail.stdout.close()
            tail.stderr.close()


def test_a_tail_waits_out_a_server_restart_however_long_then_ctrl_c_ends_it_quietly(tmp_path: Path) -> None:
    """A server stopped (SIGTERM) and started again four seconds later: the
    tail resumes after the last event it printed. It gave up after five
    failures in a row (about 3 s of backoff: "no Chronicle server
    answered", exit 1), though its help and docs/security.md say it
    resumes. Ctrl-C while it waits for the server exits 130, quietly."""
    server = Replica(f"sqlite:///{tmp_path}/events.db", log_path=tmp_path / "server.log")
    tail: subprocess.Popen[str] | None = None
    try:
        server.start()
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        tail = subprocess.Popen(
            [sys.executable, "-c", WITH_CTRL_C, "tail", "--from", "0", "--server", server.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tail.stdout is not None and tail.stderr is not None
        first = json.loads(tail.stdout.readline() or "null")
        assert first is not None, tail.stderr.read()
        assert server.stop(signal.SIGTERM) == 0
        time.sleep(4.0)  # longer than the five attempts' backoff the tail had
        assert tail.poll() is None, tail.stderr.read()
        server.start()  # the same port and database
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 3}', server=server.address)
        second = json.loads(tail.stdout.readline() or "null")
        assert second is not None, tail.stderr.read()
        server.stop(signal.SIGKILL)
        time.sleep(0.5)  # the server gone again: the tail waits for it
        tail.send_signal(signal.SIGINT)
        code, told = tail.wait(30), tail.stderr.read()
    finally:
        server.close()
        if tail is not None:
            tail.kill()
            tail.wait(10)
            for pipe in (tail.stdout, tail.stderr):
                if pipe is not None:
                    pipe.close()
    assert [(e["version"], e["event_type"]) for e in (first, second)] == [
        ("1", "bank.v1.AccountOpened"),
        ("2", "bank.v1.MoneyDeposited"),
    ]
    assert code == 130
    assert f"resuming after position {first['position']}" in told
    assert "Traceback" not in told and "error:" not in told, told


def test_a_tail_that_reaches_no_server_at_all_says_so_at_once(tmp_path: Path) -> None:
    """Waiting for a server that answered once is resuming; waiting for one
    that never did would hide a wrong address: it exits 1 with the hint
    every command gives."""
    started = time.monotonic()
    nobody = cli("tail", "--from", "0", server=f"127.0.0.1:{free_port()}", check=False)
    assert nobody.returncode == 1
    assert "no Chronicle server answered" in nobody.stderr
    assert "tail: the stream ended" not in nobody.stderr
    assert time.monotonic() - started < 20


def test_a_user_follows_the_transfers_reaction_and_its_parked_commands(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=["--anonymous-admin"]) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 40}', server=server.address)
        cli("submit", "acc-2", "bank.v1.OpenAccount", '{"owner": "bob"}', server=server.address)
        transfer = '{"source_account_id": "acc-1", "target_account_id": "acc-2", "amount": 15}'
        cli("submit", "t-1", "bank.v1.TransferMoney", transfer, server=server.address)
        deadline = time.monotonic() + 20
        while (
            json.loads(cli("get", "t-1", server=server.address).stdout)["state"]["status"] == "TRANSFER_STATUS_PENDING"
        ):
            assert time.monotonic() < deadline, "the transfer never completed"
            time.sleep(0.1)
        (listed,) = [json.loads(line) for line in cli("reaction", server=server.address).stdout.splitlines()]
        assert (listed["name"], listed["running"], listed["parked"]) == ("bank.transfers", True, "0")
        status = json.loads(cli("reaction", "bank.transfers", server=server.address).stdout)
        assert int(status["accepted"]) == 3  # the debit, the credit, the completion
        assert cli("reaction", "bank.transfers", "--parked", server=server.address).stdout == ""
        missing = cli("reaction", "bank.transfers", "--replay", str(uuid.uuid4()), server=server.address, check=False)
        assert missing.returncode == 1
        assert "NOT_FOUND PARKED_COMMAND_NOT_FOUND" in missing.stderr


def test_a_tail_with_a_token_file_goes_on_across_short_lived_tokens(tmp_path: Path) -> None:
    """The server ends the tail's stream at each token's exp; the CLI reads
    the file again (renewed meanwhile, as an agent does: at half of the last
    token's life) and resumes after the last event it printed."""
    issuer = JwtIssuer()
    token_file = tmp_path / "token"
    expiries: list[int] = []

    def renew() -> None:
        expiries.append(int(time.time()) + 2)
        fresh = tmp_path / "token.new"
        fresh.write_text(issuer.sign({"sub": "alice", "iss": issuer.issuer, "exp": expiries[-1]}) + "\n")
        fresh.replace(token_file)  # at once, as agents swap a secret

    stop = threading.Event()

    def agent() -> None:
        while not stop.wait(1.0):
            renew()

    renew()
    renewing = threading.Thread(target=agent, daemon=True)
    renewing.start()
    extra = [
        "--auth",
        "--policy-file",
        write(tmp_path / "policy.toml", POLICY),
        "--jwt-key-file",
        write(tmp_path / "jwt.pem", issuer.public_key),
        "--jwt-issuer",
        issuer.issuer,
        "--jwt-leeway-seconds",
        "0",
    ]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        tail = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "tail",
                "--from",
                "0",
                "--token-file",
                str(token_file),
                "--server",
                server.address,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            owner = issuer.token("alice", expires_in=600)

            def submit(*args: str) -> subprocess.CompletedProcess[str]:
                return cli(*args, "--token", owner, server=server.address)

            submit("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}')
            assert tail.stdout is not None
            lines = [tail.stdout.readline()]  # the tail is following: its tokens' expiries count from here
            # Tokens live 2 s: in 8 s the tail's stream ends with one at least
            # twice, however slowly a loaded machine lets it reconnect.
            until = time.time() + 8
            while time.time() < until:
                submit("submit", "acc-1", "bank.v1.Deposit", '{"amount": 1}')
            version = json.loads(submit("get", "acc-1").stdout)["version"]
            lines += [tail.stdout.readline() for _ in range(version - 1)]
        finally:
            stop.set()
            tail.kill()
            tail.wait(10)
            assert tail.stderr is not None
            told = tail.stderr.read()
            for pipe in (tail.stdout, tail.stderr):
                if pipe is not None:
                    pipe.close()
    assert all(lines), told  # the tail did not end
    printed = [json.loads(line) for line in lines]
    assert [int(event["version"]) for event in printed] == list(range(1, version + 1))  # none missed, none twice
    assert told.count("the stream ended (TOKEN_EXPIRED); resuming after position") >= 2, told


def test_a_token_and_a_token_file_together_or_an_unreadable_file_are_usage_errors(tmp_path: Path) -> None:
    both = cli(
        "get", "acc-1", "--token", "chr_x", "--token-file", str(tmp_path / "t"), server="127.0.0.1:1", check=False
    )
    assert (both.returncode, both.stderr) == (
        2,
        "error: give the bearer token with --token or --token-file, not both\n",
    )
    missing = cli("get", "acc-1", "--token-file", str(tmp_path / "none"), server="127.0.0.1:1", check=False)
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: cannot read the token file {tmp_path / 'none'}")


def test_a_client_command_says_a_failure_once_without_grpcs_own_log_lines(tmp_path: Path) -> None:
    """--tls-ca against a plaintext server: gRPC's core logs the failed
    handshake itself ("I… ssl_transport_security.cc] Handshake failed …")
    before the command says it, with what to do. Not by default, by either
    entry point; a GRPC_VERBOSITY the user set is theirs."""
    ca = write(tmp_path / "ca.pem", Authority().certificate)
    environment = {name: value for name, value in os.environ.items() if name != "GRPC_VERBOSITY"}
    entry_points = {
        "chronicle": [str(Path(sys.executable).with_name("chronicle"))],
        "-m": [sys.executable, "-m", "service"],
    }

    def get(entry_point: str, **env: str) -> subprocess.CompletedProcess[str]:
        command = [*entry_points[entry_point], "get", "acc-1", "--server", server.address, "--tls-ca", ca]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, env={**environment, **env})

    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        quiet = {entry_point: get(entry_point) for entry_point in entry_points}
        asked = get("chronicle", GRPC_VERBOSITY="INFO")
    for ran in quiet.values():
        assert (ran.returncode, ran.stdout) == (1, "")
        error, hint = ran.stderr.splitlines()
        assert error.startswith("error: UNAVAILABLE: failed to connect to all addresses") and "handshake" in error
        assert hint == (
            f"  the TLS handshake failed at {server.address}: a server without TLS needs no --tls-ca;"
            " one with it, the CA that signed its certificate"
        )
    assert asked.returncode == 1
    assert "ssl_transport_security.cc" in asked.stderr


# A process whose interpreter cannot finish: a daemon thread holds a lock
# that the interpreter's exit work then waits for (what gRPC's client
# threads can do to a finalizer).
_EXIT_WORK_THAT_NEVER_ENDS = """
import atexit, sys, threading, time
lock = threading.Lock()
held = threading.Event()
def hold():
    lock.acquire()
    held.set()
    time.sleep(3600)
threading.Thread(target=hold, daemon=True).start()
held.wait()
atexit.register(lock.acquire)
sys.argv = ["chronicle", *sys.argv[1:]]
from service.cli import {entry}
{call}
"""


@pytest.mark.parametrize(
    "command",
    [["health", "--server", "127.0.0.1:1", "--timeout", "1"], ["read", "acc-1", "--server", "127.0.0.1:1"]],
    ids=["health", "read"],
)
def test_a_command_that_talked_to_a_server_exits_when_done_whatever_its_threads_hold(command: list[str]) -> None:
    """``chronicle`` exits once its answer is said, without the interpreter's
    exit work (which the stand-in above blocks for ever); the entry point
    before it, ``sys.exit(main())``, never ends there."""
    script = _EXIT_WORK_THAT_NEVER_ENDS.format(entry="run", call="run()")
    result = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True, timeout=30)
    # Its refusal and the hint after it, whole: the output was flushed.
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert result.stderr.splitlines()[-1].startswith("  no Chronicle server answered at 127.0.0.1:1: start one")
    # The stand-in does block an ordinary exit: the test would hang on the old entry point.
    ordinary = _EXIT_WORK_THAT_NEVER_ENDS.format(entry="main", call="sys.exit(main())")
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", ordinary, *command], capture_output=True, text=True, timeout=3)
