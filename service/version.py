"""Which Chronicle this is: the version (``service.__version__``, the
package's, bumped as CHANGELOG.md's policy says) and, when known, the git
commit it was built from. The wheel's build hook (tools/hatch_build.py)
writes the commit into ``service/build_commit.txt``; a checkout run from
source without one built says "unknown" rather than ask git at start-up
(a container holds no repository).

Shown by ``chronicle --version``, the start-up line, the
``chronicle_build_info`` gauge and each cluster member (``Member.version``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from service import __version__

VERSION = __version__
COMMIT_FILE = Path(__file__).with_name("build_commit.txt")


@cache
def commit() -> str:
    """The git commit this build came from; "" when not known."""
    try:
        return COMMIT_FILE.read_text().strip()
    except OSError:
        return ""


def described() -> str:
    """``0.2.0 (commit 1a2b3c4)``, or ``0.2.0`` when the commit is not known."""
    found = commit()
    return f"{VERSION} (commit {found})" if found else VERSION
