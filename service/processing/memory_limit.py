"""Whether ``--max-workers`` cached aggregates fit under the process's
memory limit (its cgroup's, as a container's), checked once at start.

Left alone, a server whose cache outgrows its container is killed by the
kernel with nothing in its own log (in a 120 MiB container with the default
100,000, after some 13,000 aggregates of 2 KB each). Measured with
``bench/cache_memory.py`` (docs/deployment.md, "Memory and --max-workers"):
a server holds about 80 MiB before it caches anything, and a cached
aggregate at a small state about 1.1 KB of RSS (more with a larger state:
about its serialized size more). The check uses those figures rounded up;
a larger state needs more, which only the operator knows: the warning is a
floor, not a sizing.
"""

from __future__ import annotations

from pathlib import Path

# The server's RSS before it caches an aggregate (the bank plugin's server
# measured 76 MiB), and a cached aggregate's at a small state (1.1 KB).
BASE_BYTES = 80 * 2**20
SMALL_AGGREGATE_BYTES = 1536

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

# cgroup v1 reports no limit as a number near 2**63.
_UNLIMITED = 2**60


def memory_limit(root: Path | None = None, proc_cgroup: Path | None = None) -> tuple[int, Path] | None:
    """The memory limit of this process's cgroup and the file that says it,
    or None (no limit, or no cgroup file to read). cgroup v2's
    ``memory.max`` first, then v1's ``memory.limit_in_bytes``; in the
    process's own cgroup (``/proc/self/cgroup``), else at the mount's root
    (a container sees its own cgroup there)."""
    for path in _candidates(root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            continue
        return None if limit >= _UNLIMITED else (limit, path)
    return None


def _candidates(root: Path, proc_cgroup: Path) -> list[Path]:
    v2 = v1 = ""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":
            v2 = path.strip("/")
        elif "memory" in controllers.split(","):
            v1 = path.strip("/")
    found = []
    if v2:
        found.append(root / v2 / "memory.max")
    found.append(root / "memory.max")
    if v1:
        found.append(root / "memory" / v1 / "memory.limit_in_bytes")
    found.append(root / "memory" / "memory.limit_in_bytes")
    return found


def check_cache_memory(max_workers: int, *, root: Path | None = None, proc_cgroup: Path | None = None) -> str | None:
    """A warning to log when ``max_workers`` cached aggregates of a small
    state would not fit under the memory limit; None when they do, or when
    there is no limit."""
    found = memory_limit(root, proc_cgroup)
    if found is None:
        return None
    limit, path = found
    needed = BASE_BYTES + max_workers * SMALL_AGGREGATE_BYTES
    if limit >= needed:
        return None
    fits = max(0, (limit - BASE_BYTES) // SMALL_AGGREGATE_BYTES)
    return (
        f"--max-workers {max_workers}: that many cached aggregates need about {needed / 2**20:.0f} MiB even at a"
        f" small state (about {BASE_BYTES // 2**20} MiB for the server and {SMALL_AGGREGATE_BYTES} bytes each),"
        f" over the memory limit of {limit / 2**20:.0f} MiB ({path}): the kernel would kill the server before"
        f" the cap refused anything. Set --max-workers to at most {fits}, less for larger states (see"
        " docs/deployment.md, 'Memory and --max-workers')"
    )
