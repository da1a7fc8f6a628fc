"""One plugin at two versions, for rolling upgrades (docs/deployment.md,
"Rolling a new plugin version"): ``v1`` and ``v2`` are modules a server
loads with ``--plugin tests.support.purse.v1`` (or ``.v2``), and each has
its ``plugin`` for an in-process ``Registry``.

From v1 to v2: ``MoneyDeposited`` went from whole units (schema 1) to
cents (schema 2, with an upcaster from 1), so v1 cannot read what v2
writes; the command ``bank.v1.OpenAccount`` was renamed (v2 opens a purse
with ``bank.v1.RecordRefund``, whose field 1 is a text as OpenAccount's
owner is), so v2 no longer registers it. Both declare the projection
``purse.totals`` (each purse's balance in cents) over ``MoneyDeposited``.
``shadow_v1`` and ``shadow_v2`` declare the reaction ``purse.shadow``, which
opens a "shadow-" purse for each purse opened, with the command each
version opens purses with.
"""

PURSE = "Purse"
TOTALS = "purse.totals"
SHADOW = "purse.shadow"
