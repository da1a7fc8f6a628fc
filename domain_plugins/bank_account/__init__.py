"""Bank accounts: open, deposit, withdraw, close.

Rules: an account opens once; amounts are positive; a withdrawal never
takes the balance below zero; nothing but OpenAccount on an account that does
not exist; nothing at all on a closed account.
"""

from domain_plugins.bank_account.domain import account, plugin

__all__ = ["account", "plugin"]
