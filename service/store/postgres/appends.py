"""Writing appends to PostgreSQL: group commit's batches, and the precise
path for appends that take claims or write no events.

One SQL form for every write of events (``sql.APPEND_BATCH``): a batch of many
aggregates, or one append on the precise path after its command records and
claims. A batch is one statement, one transaction, one round trip.

Conflicts stay per aggregate. The batch statement never decides who wins: if
any append in it would fail (a command id already recorded, an aggregate that
moved on), the statement refuses itself. One read then says which appends are
at fault (``_settle``): a stale append fails with ``ConcurrencyConflict`` (its
executor reloads and decides again), one whose command id is recorded goes
alone through the precise path (which reports exactly its outcome), and the
rest are written again as a batch. Conflicts are rare with one server (a
worker owns its aggregate in its process) and common between replicas that
share aggregates, which is why they must not cost the innocent appends of a
batch a transaction each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial

from psycopg.pq.abc import PGresult

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict, InvalidInput, NotUnique, StoreUnavailable
from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.errors import Refused, UniqueViolation, rolled_back, translation
from service.store.postgres.group_commit import Append, Outcome
from service.store.postgres.rows import rows
from service.store.records import ClaimChange, CommandRecord, NewEvent, RecordedEvent
from service.store.serialization import compact_json, rejection_dict
from service.store.sql_common import command_from_row

log = logging.getLogger(__name__)


# An event's payload as JSON, from its type and bytes (None: none kept); set
# when the store keeps a JSON copy of payloads (--postgres-json-events).
JsonOf = Callable[[str, bytes], object]


def events_json(batch: Sequence[Append], json_of: JsonOf | None = None) -> str:
    rows: list[dict[str, object]] = []
    for append in batch:
        for version, new in enumerate(append.events, start=append.expected_version + 1):
            rows.append(
                {
                    "i": len(rows) + 1,
                    "id": new.event_id,
                    "a": append.aggregate_id,
                    "t": new.aggregate_type,
                    "v": version,
                    "x": append.expected_version,
                    "e": new.event_type,
                    "s": new.schema_version,
                    "p": new.payload.hex(),
                    "m": dict(new.metadata) if new.metadata else None,
                    "c": new.command_id,
                    "u": new.user_id,
                    "o": new.origin,
                    "r": new.correlation_id,
                    "k": new.causation_id,
                    "at": new.timestamp_us,
                }
            )
            if json_of is not None:
                rows[-1]["j"] = json_of(new.event_type, new.payload)
    return compact_json(rows)


def commands_json(commands: Sequence[CommandRecord]) -> str:
    """Command records as the statements' JSON, in command id order: rows
    are inserted in that order, so two batches carrying the same commands
    (a client's retries crossing on two replicas) wait for each other's
    first one instead of each holding what the other needs next."""
    if len(commands) > 1:
        commands = sorted(commands, key=_command_id)
    return compact_json(
        [
            {
                "id": c.command_id,
                "a": c.aggregate_id,
                "t": c.command_type,
                "f": c.fingerprint.hex(),
                "first": c.first_version,
                "last": c.last_version,
                "rejection": None if c.rejection is None else rejection_dict(c.rejection),
                "p": c.principal,
                "u": c.user_id,
                "o": c.origin,
                "at": c.recorded_at_us,
                "iss": c.issued_at_us,
            }
            for c in commands
        ]
    )


def _command_id(command: CommandRecord) -> str:
    return command.command_id


def recorded(batch: Sequence[Append], first_position: int) -> list[list[RecordedEvent]]:
    """Each append's events as committed, given the batch's first position
    (positions follow the order of ``events_json``)."""
    result = []
    position = first_position
    for append in batch:
        events = []
        for version, new in enumerate(append.events, start=append.expected_version + 1):
            events.append(
                RecordedEvent.committed(new, aggregate_id=append.aggregate_id, version=version, position=position)
            )
            position += 1
        result.append(events)
    return result


def append_statement(
    batch: Sequence[Append], *, with_commands: bool = True, json_of: JsonOf | None = None
) -> Statement:
    commands = [command for append in batch for command in append.commands] if with_commands else []
    total = sum(len(append.events) for append in batch)
    if json_of is not None:
        return Statement(
            sql.APPEND_BATCH_JSON.encode(),
            (commands_json(commands), total, events_json(batch, json_of)),
            name=sql.APPEND_BATCH_JSON_NAME,
        )
    return Statement(
        sql.APPEND_BATCH.encode(),
        (commands_json(commands), total, events_json(batch)),
        name=sql.APPEND_BATCH_NAME,
    )


def append_one_statements(
    append: Append, ordered_claims: Sequence[ClaimChange], *, json_of: JsonOf | None = None
) -> list[Statement]:
    """One append on the precise path, in the store's lock order (sql.py,
    "Lock order"): command records, then claims in (scope, value) order,
    then the position lock with the events (or the version check of an
    append of none). A claim's CHECK_CLAIM refuses with the claim's index
    in ``ordered_claims``."""
    statements: list[Statement] = []
    if append.commands:
        statements.append(Statement(sql.INSERT_COMMANDS.encode(), (commands_json(append.commands),)))
    aggregate_id, expected_version = append.aggregate_id, append.expected_version
    for index, claim in enumerate(ordered_claims):
        if claim.release:
            statements.append(Statement(sql.RELEASE_CLAIM.encode(), (claim.scope, claim.value, aggregate_id)))
        else:
            statements.append(Statement(sql.TAKE_CLAIM.encode(), (claim.scope, claim.value, aggregate_id)))
            statements.append(
                Statement(
                    sql.CHECK_CLAIM.encode(), (claim.scope, claim.value, aggregate_id, expected_version, str(index))
                )
            )
    if append.events:
        statements.append(append_statement([append], with_commands=False, json_of=json_of))
    else:
        statements.append(Statement(sql.CHECK_VERSION.encode(), (aggregate_id, expected_version)))
    return statements


class AppendWriter:
    """Writes appends; ``write`` is group commit's one callable."""

    def __init__(self, db: Database, *, json_of: JsonOf | None = None) -> None:
        self._db = db
        self._json_of = json_of
        self.alone = 0  # appends written on the precise path after a refused batch

    # -- group commit ----------------------------------------------------------

    def write(self, batch: Sequence[Append]) -> asyncio.Future[list[Outcome]]:
        """The batch in one statement; its outcomes, one per append."""
        written: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        sent = self._db.submit([append_statement(batch, json_of=self._json_of)])
        sent.add_done_callback(partial(self._first_try, batch, written))
        return written

    def _first_try(
        self, batch: Sequence[Append], written: asyncio.Future[list[Outcome]], sent: asyncio.Future[list[PGresult]]
    ) -> None:
        error = sent.exception()
        if error is None:
            outcomes = self._committed(batch, sent.result())
            if not written.done():
                written.set_result(list(outcomes))
            return
        meaning = translation(error, "append")
        # Nothing of the batch was written. Rolled back as a deadlock's
        # victim: settling sends it again through Database.run, which retries
        # a rollback. Refused (a stale version, a command id seen before):
        # the same batch would be refused again, so settling starts with the
        # read that names the appends at fault. A value PostgreSQL cannot
        # store: each append goes alone, and the one at fault hears it.
        if rolled_back(error):
            settling = self._settle(batch, refused=False)
        elif isinstance(meaning, Refused | UniqueViolation):
            settling = self._settle(batch, refused=True)
        elif isinstance(meaning, InvalidInput) and len(batch) > 1:
            settling = self._each_alone(batch, range(len(batch)), {})
        else:
            if not written.done():
                written.set_exception(meaning if meaning is not None else error)
            return
        task = asyncio.get_running_loop().create_task(settling)
        task.add_done_callback(partial(_relay, written))

    def _committed(self, batch: Sequence[Append], results: list[PGresult]) -> list[list[RecordedEvent]]:
        first_position = int(results[0].get_value(0, 0) or b"0")
        appended = recorded(batch, first_position)
        self._db.commits.notify(first_position + sum(len(a.events) for a in batch) - 1)
        return appended

    async def _settle(self, batch: Sequence[Append], *, refused: bool) -> list[Outcome]:
        """After a batch that wrote nothing: blame the appends at fault,
        write the rest. ``refused``: it was refused (not rolled back), so
        the first step is the read that names the culprits, not a resend."""
        outcomes: dict[int, Outcome] = {}
        pending = list(range(len(batch)))
        alone: list[int] = []
        for attempt in range(3):
            chosen = [batch[i] for i in pending]
            if attempt > 0 or not refused:
                try:
                    results = await self._db.run("append", [append_statement(chosen, json_of=self._json_of)])
                except (Refused, UniqueViolation):
                    pass
                except InvalidInput:
                    break  # a value PostgreSQL cannot store: the precise path names the append
                else:
                    for i, events in zip(pending, self._committed(chosen, results), strict=True):
                        outcomes[i] = events
                    pending = []
                    break
            current, recorded_ids = await self._diagnose(chosen)
            still = []
            for i in pending:
                append = batch[i]
                if any(c.command_id in recorded_ids for c in append.commands):
                    alone.append(i)
                elif current.get(append.aggregate_id, 0) != append.expected_version:
                    outcomes[i] = ConcurrencyConflict(
                        append.aggregate_id, append.expected_version, current=current.get(append.aggregate_id, 0)
                    )
                else:
                    still.append(i)
            if still == pending:
                break  # nothing to blame (a race with another replica): each goes alone
            pending = still
        return await self._each_alone(batch, [*alone, *pending], outcomes)

    async def _each_alone(
        self, batch: Sequence[Append], indexes: Iterable[int], outcomes: dict[int, Outcome]
    ) -> list[Outcome]:
        """The appends at ``indexes`` on the precise path, one at a time;
        every append's outcome (``outcomes`` holds the others')."""
        for i in indexes:
            self.alone += 1
            append = batch[i]
            try:
                outcomes[i] = await self.append_one(
                    append.aggregate_id, append.events, append.expected_version, commands=append.commands
                )
            except Exception as error:
                outcomes[i] = error
        return [outcomes[i] for i in range(len(batch))]

    async def _diagnose(self, batch: Sequence[Append]) -> tuple[dict[str, int], set[str]]:
        (result,) = await self._db.run(
            "append",
            [
                Statement(
                    sql.DIAGNOSE.encode(),
                    ([a.aggregate_id for a in batch], [c.command_id for a in batch for c in a.commands]),
                )
            ],
            read_only=True,
        )
        current: dict[str, int] = {}
        recorded_ids: set[str] = set()
        for row in range(result.ntuples):
            name = (result.get_value(row, 0) or b"").decode()
            version = int(result.get_value(row, 1) or b"0")
            if version < 0:
                recorded_ids.add(name)
            else:
                current[name] = version
        return current, recorded_ids

    # -- the precise path --------------------------------------------------------

    async def append_one(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        """One append in its own transaction, reporting its own error
        precisely: command records, then claims (before the position lock,
        so it is never held while waiting for another transaction's claim; in
        one order, so two appends claiming the same values wait instead of
        deadlocking), then the version check or the events."""
        append = Append(aggregate_id, events, expected_version, commands)
        ordered = sorted(claims, key=lambda c: (c.scope, c.value))
        statements = append_one_statements(append, ordered, json_of=self._json_of)
        try:
            results = await self._db.run("append", statements)
        except UniqueViolation as violation:
            if violation.constraint == sql.COMMANDS_KEY:
                raise await self._already_recorded(commands) from None
            if violation.constraint == sql.EVENTS_VERSION_KEY:
                raise ConcurrencyConflict(aggregate_id, expected_version) from None
            raise StoreUnavailable(f"unexpected unique violation on {violation.constraint}") from violation
        except Refused as refused:
            if refused.code == sql.CLAIM_HELD:
                lost = ordered[int(refused.detail)]
                raise NotUnique(lost.scope, lost.value) from None
            current = int(refused.detail) if refused.detail.isdigit() else None
            raise ConcurrencyConflict(aggregate_id, expected_version, current=current) from None
        if not events:
            return []
        return self._committed([append], results[-1:])[0]

    async def _already_recorded(self, commands: Sequence[CommandRecord]) -> CommandAlreadyRecorded | StoreUnavailable:
        (result,) = await self._db.run(
            "find_command",
            [Statement(sql.FIND_COMMANDS.encode(), ([c.command_id for c in commands],))],
            read_only=True,
        )
        found = {record.command_id: record for record in _command_rows(result)}
        for command in commands:
            if command.command_id in found:
                return CommandAlreadyRecorded(found[command.command_id])
        return StoreUnavailable("a command id was reported recorded but cannot be found")


def _command_rows(result: PGresult) -> list[CommandRecord]:
    return [command_from_row(row) for row in rows(result)]


def _relay(target: asyncio.Future[list[Outcome]], source: asyncio.Task[list[Outcome]]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
