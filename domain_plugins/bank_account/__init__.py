"""Bank accounts: open, deposit, withdraw, close.

Rules: an account opens once; amounts are positive; a withdrawal never
takes the balance below zero; nothing but OpenAccount on an account that does
not exist; nothing at all on a closed account.

Read model: ``balances_by_owner`` (a projection) keeps each owner's total.

Transfers: ``TransferMoney`` on a transfer aggregate; the ``bank.transfers``
reaction (a process manager) debits the source, credits the target, and
refunds the source when the credit is refused (``transfers.py``). A
transfer moves money between accounts of its own tenant only.
"""

from domain_plugins.bank_account.domain import account, plugin
from domain_plugins.bank_account.read_model import balances_by_owner
from domain_plugins.bank_account.transfers import transfer, transfers

__all__ = ["account", "balances_by_owner", "plugin", "transfer", "transfers"]
