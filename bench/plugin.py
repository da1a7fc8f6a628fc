"""The benchmark's own domain: a tally that records N events per command.

Built from Protobuf's well-known wrapper types so it needs no generated code
and clashes with no example plugin: the command ``UInt32Value(n)`` appends
``n`` events ``Int64Value`` (at least one); the state counts them. The
handler does the least a real one does (read state, decide, return events),
so the benchmark measures Chronicle, not a domain.

    chronicle serve --plugin bench.plugin
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2 as wrappers

from service.plugins import CommandContext, Plugin

plugin = Plugin("bench", description="Benchmark tally: UInt32Value(n) appends n events.")
tally = plugin.aggregate("Tally", state=wrappers.Int64Value, snapshot_every=1000)


@tally.command(wrappers.UInt32Value)
def record(
    command: wrappers.UInt32Value, state: wrappers.Int64Value, context: CommandContext
) -> list[wrappers.Int64Value]:
    return [wrappers.Int64Value(value=state.value + i) for i in range(1, max(command.value, 1) + 1)]


@tally.apply(wrappers.Int64Value)
def _counted(state: wrappers.Int64Value, event: wrappers.Int64Value) -> None:
    state.value += 1
