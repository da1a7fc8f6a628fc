"""The command line's parser: argparse's, with usage errors that point a
flag named as other tools name it at ours.

``chronicle serve`` listens on ``--listen``, and the commands that talk to
a server reach it with ``--server``: two names, because they are two
things (an address to bind, an address to dial). Users coming from other
tools type ``--address`` or ``--host``, and argparse's "unrecognized
arguments" (or a positional it then misreads) does not say what the flag
is called here; these errors add it. No flag is added: one name each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

# Flags other tools use for the server to dial, and for the address to bind.
_DIAL_LIKE = frozenset({"--address", "--addr", "--host", "--target", "--endpoint", "--url", "--listen"})
_BIND_LIKE = frozenset({"--address", "--addr", "--host", "--bind", "--port", "--server"})


def address_hint(prog: str, given: Sequence[str]) -> str:
    """What to say about the first address-like flag of ``given`` that is
    not ours ("" when there is none); ``prog`` tells ``serve`` from the rest."""
    serving = "serve" in prog.split()[1:] or any(arg == "serve" for arg in given[:1])
    for arg in given:
        flag = arg.split("=", 1)[0]
        if serving and flag in _BIND_LIKE:
            return f"; {flag} is not a flag of chronicle serve: it listens on --listen host:port (env CHRONICLE_LISTEN)"
        if not serving and flag in _DIAL_LIKE:
            return (
                f"; {flag} is not a flag here: give the server's address as --server host:port "
                "(env CHRONICLE_SERVER; --listen is chronicle serve's)"
            )
    return ""


class HintingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors end with ``address_hint``;
    its subcommands' parsers are of this class too (argparse makes them of
    their parent's)."""

    _given: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        super().error(message + address_hint(self.prog, self._given))
