"""A throwaway PostgreSQL for the test suite.

``CHRONICLE_TEST_DATABASE_URL`` names a server to use instead (its user must
be allowed to create databases). Otherwise the suite starts its own cluster:
``initdb`` in a temporary directory, as the ``postgres`` user when running as
root (PostgreSQL refuses root), listening on a free loopback port, with the
default durability settings. Binaries come from ``CHRONICLE_PG_BINDIR``,
``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` or the ``pgserver``
package, in that order. Every test gets a fresh database.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.support.processes import free_port


def find_bindir() -> Path:
    candidates: list[str] = []
    if os.environ.get("CHRONICLE_PG_BINDIR"):
        candidates.append(os.environ["CHRONICLE_PG_BINDIR"])
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        candidates.append(out)
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    try:
        import pgserver  # type: ignore[import-not-found]

        candidates.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin"))
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError(
        "no PostgreSQL server binaries found: install PostgreSQL (initdb, pg_ctl), `pip install pgserver`, "
        "set CHRONICLE_PG_BINDIR, or point CHRONICLE_TEST_DATABASE_URL at a server"
    )


@dataclass
class Cluster:
    """A running PostgreSQL and how to reach and control it."""

    admin_url: str
    bindir: Path | None = None
    datadir: Path | None = None
    run_as: str | None = None

    def _ctl(self, *args: str) -> None:
        assert self.bindir is not None and self.datadir is not None
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    @property
    def controllable(self) -> bool:
        return self.datadir is not None

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode, "-w")

    def start(self) -> None:
        self._ctl("start", "-w", "-l", str(self.datadir / "server.log"))  # type: ignore[operator]

    def promote(self) -> None:
        """A standby made the primary, as an operator fails over (``pg_ctl promote``)."""
        self._ctl("promote", "-w")

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def create_database(self) -> str:
        name = f"chronicle_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def shutdown(self) -> None:
        if self.controllable:
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
            shutil.rmtree(self.datadir.parent, ignore_errors=True)  # type: ignore[union-attr]


@dataclass
class StandbyPair:
    """A primary and a hot standby streaming from it (``pg_basebackup -R``)."""

    primary: Cluster
    standby: Cluster

    def create_database(self, timeout: float = 30.0) -> tuple[str, str]:
        """A fresh database on the primary, once the standby has it too:
        (its URL on the primary, its URL on the standby)."""
        primary_url = self.primary.create_database()
        standby_url = self.standby.url_for(urlsplit(primary_url).path.lstrip("/"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(standby_url, connect_timeout=2).close()
                return primary_url, standby_url
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def shutdown(self) -> None:
        # The standby's folder lies inside the primary's, which goes last.
        if self.standby.controllable:
            with contextlib.suppress(subprocess.CalledProcessError):
                self.standby.stop("immediate")
        self.primary.shutdown()


def start_standby_pair() -> StandbyPair:
    """A new primary (as ``start_cluster(own=True)``) and a streaming
    replication standby of it on another port, made the way an operator
    would: ``pg_basebackup -R`` as the postgres user, then started."""
    primary = start_cluster(own=True)
    assert primary.bindir is not None and primary.datadir is not None
    port = urlsplit(primary.admin_url).port
    standby_dir = primary.datadir.parent / "standby"
    prefix = ["runuser", "-u", primary.run_as, "--"] if primary.run_as else []
    try:
        subprocess.run(
            [
                *prefix, str(primary.bindir / "pg_basebackup"), "-D", str(standby_dir), "-R", "-X", "stream",
                "-c", "fast", "-d", f"host=127.0.0.1 port={port} user=postgres",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
        standby_port = free_port()
        with (standby_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {standby_port}\n")
        standby = Cluster(
            admin_url=f"postgresql://postgres@127.0.0.1:{standby_port}/postgres",
            bindir=primary.bindir,
            datadir=standby_dir,
            run_as=primary.run_as,
        )
        standby.start()
    except BaseException:
        primary.shutdown()
        raise
    return StandbyPair(primary, standby)


def start_cluster(*, own: bool = False) -> Cluster:
    """The suite's server: the one named by CHRONICLE_TEST_DATABASE_URL, or a
    new cluster. ``own``: always a new cluster, which the caller may stop."""
    given = os.environ.get("CHRONICLE_TEST_DATABASE_URL")
    if given and not own:
        return Cluster(admin_url=given)
    bindir = find_bindir()
    root = Path(tempfile.mkdtemp(prefix="chronicle-pg-"))
    datadir = root / "data"
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        account = pwd.getpwnam(run_as)
        os.chown(root, account.pw_uid, account.pw_gid)
    prefix = ["runuser", "-u", run_as, "--"] if run_as else []
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
            "max_connections = 300\nshared_buffers = 128MB\n"
        )
    cluster = Cluster(
        admin_url=f"postgresql://postgres@127.0.0.1:{port}/postgres", bindir=bindir, datadir=datadir, run_as=run_as
    )
    cluster.start()
    return cluster


async def schema_on_standby(primary_url: str, standby_url: str, *, within: float = 20.0) -> None:
    """Create Chronicle's schema on the primary and wait until its standby
    has replayed it (until then, reads from the standby are UNAVAILABLE)."""
    import asyncio

    from service.store.postgres import PostgresStore
    from service.store.postgres.migrations import known_migrations

    primary = PostgresStore(primary_url, pool_size=1)
    await primary.open()
    await primary.close()
    newest = known_migrations()[-1].version
    deadline = time.monotonic() + within
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(standby_url) as conn:
                cursor = await conn.execute("SELECT max(version) FROM chronicle.schema_migrations")
                row = await cursor.fetchone()
                if row is not None and row[0] == newest:
                    return
        except psycopg.errors.UndefinedTable:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the standby did not get the schema within {within}s")
        await asyncio.sleep(0.05)
