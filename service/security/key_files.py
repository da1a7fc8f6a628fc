"""Files that hold secrets are the owner's alone, as ssh insists for
private keys.

The TLS key, an HMAC JWT secret, the API-key file and the master-key file
are refused at start-up (``KEY_FILE_READABLE``) when their group or others
have any access to them (mode bits ``0o077``): another account on the
machine could read them (impersonate the server, mint tokens, decrypt every
payload) or change them. ``--allow-readable-keys`` turns the refusal into
a warning, for files something else protects (a mount only the server's
container sees, a Kubernetes secret volume with its default mode 0644).
A public JWT key is not checked: it is not a secret. Only POSIX systems
have these modes; elsewhere nothing is checked.
"""

from __future__ import annotations

import logging
import os
import stat

from service.errors import ConfigurationError

log = logging.getLogger("chronicle")

GROUP_OR_OTHERS = 0o077


def check_private(path: str, *, what: str, allow_readable: bool) -> None:
    """Refuse (or with ``allow_readable`` warn about) ``path`` when its
    group or others may access it. A file that cannot be read at all is
    left to its loader to report."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if not mode & GROUP_OR_OTHERS:
        return
    problem = f"the {what} {path} is open to its group or to others (mode {mode:04o})"
    if allow_readable:
        log.warning("%s; allowed by --allow-readable-keys", problem)
        return
    raise ConfigurationError(
        f"{problem}: another account on this machine could read or change it. Run chmod 600 {path}, or pass"
        " --allow-readable-keys (CHRONICLE_ALLOW_READABLE_KEYS=true) if something else protects it",
        reason="KEY_FILE_READABLE",
        metadata={"file": path, "mode": f"{mode:04o}"},
    )
