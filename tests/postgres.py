"""A throwaway PostgreSQL server for one test session: the access store's tests run on it.

    server = PostgresServer.start()        # initdb into a temp dir, pg_ctl start, ~2 s
    url = server.new_database()            # postgresql+psycopg://maas:...@127.0.0.1:PORT/t_1_...
    server.stop()                          # pg_ctl stop -m fast, the temp dir removed

tests/conftest.py's session fixture ``postgres`` starts it on first use. It is the PostgreSQL
that Debian's package installs (`make setup` installs it where it is missing); the server
listens on 127.0.0.1 only, on a free port, and takes only the password of its one role
(scram-sha-256), generated per session. PostgreSQL refuses to run as root: as root, every
command runs as the unprivileged ``postgres`` user that Debian's package creates, which owns
the temp dir.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

INSTALL_HINT = ("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin):"
                " `make setup` installs it when run as root; or run `sudo apt-get install -y "
                "postgresql` (Debian, Ubuntu) or `brew install postgresql` (macOS), then the "
                "tests again")
USER = "maas"  # the role the tests connect as, with the session's password
# Startup in about a second, and databases made in tens of milliseconds: the data is thrown
# away at the end of the session, so nothing is ever flushed to disk (fsync, full-page
# writes and synchronous commits off) and shared memory is small (the default 128 MB is
# for real workloads). 150 connections: each store's engine pools its own, per database.
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "16MB", "max_connections": "150"}


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl: PATH's, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # /usr/local/bin/initdb links to Debian's folder
    folders = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    newest = max(folders, default=None,
                 key=lambda p: [int(n) for n in re.findall(r"\d+", p.split("/")[4])])
    return Path(newest).parent if newest else None


def _memory_dir() -> str | None:
    """/dev/shm where it has room (1 GiB; Docker's default 64 MB has not), else the usual temp
    dir: a new database there took 28 ms against 300 ms on this machine's disk-backed /tmp,
    fsync off in both (CREATE DATABASE writes a few hundred files)."""
    shm = Path("/dev/shm")
    try:
        roomy = shm.is_dir() and shutil.disk_usage(shm).free >= 1 << 30
    except OSError:
        return None
    return str(shm) if roomy and os.access(shm, os.W_OK) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: ``url(db)``, ``new_database()``, ``stop()``."""

    bin_dir: Path
    folder: Path  # the temp dir: data/, the server log, its unix socket
    port: int
    password: str
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def start(cls, timeout_s: float = 30.0) -> PostgresServer:
        """initdb, configure and start a server; raise RuntimeError naming what failed."""
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError(INSTALL_HINT)
        # short: a socket path ends at 107 bytes
        folder = Path(tempfile.mkdtemp(prefix="maas-pg-", dir=_memory_dir()))
        server = cls(bin_dir, folder, _free_port(), secrets.token_hex(16))
        try:
            server._init()
            server._launch(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _as_owner(self, *command: str) -> list[str]:
        """``command`` as the user who owns the data: ``postgres`` when we are root."""
        if os.geteuid() != 0:
            return list(command)
        return ["runuser", "-u", "postgres", "--", *command]

    def _run(self, *command: str, timeout_s: float = 60.0) -> None:
        # cwd: the owner may not be allowed into ours, and initdb resolves paths from it.
        try:
            done = subprocess.run(self._as_owner(*command), capture_output=True, text=True,
                                  timeout=timeout_s, cwd=self.folder)
        except FileNotFoundError as exc:  # runuser (util-linux) where we are root
            raise RuntimeError(f"{exc.filename} is not installed: {INSTALL_HINT}") from None
        if done.returncode:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command[:2])} failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}{tail}")

    def _give(self, path: Path) -> None:
        """Make ``path`` the server's own: the ``postgres`` user's when we are root."""
        if os.geteuid() != 0:
            return
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("PostgreSQL refuses to run as root, and there is no 'postgres' "
                               "user to run it as: install Debian's postgresql package (it "
                               "creates one) or run the tests as another user") from None
        os.chown(path, owner.pw_uid, owner.pw_gid)

    def _init(self) -> None:
        self._give(self.folder)
        pwfile = self.folder / "password"
        pwfile.write_text(self.password)
        self._give(pwfile)
        # --no-sync: a throwaway cluster need not reach the disk; C locale: no locale data.
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.folder / "data"), "-U", USER,
                  f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        pwfile.unlink()
        # Password (scram-sha-256) for every connection, TCP or socket; no trust anywhere.
        (self.folder / "data" / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")

    def _launch(self, timeout_s: float) -> None:
        options = " ".join([f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                            f"-c unix_socket_directories={self.folder}",
                            *(f"-c {name}={value}" for name, value in SETTINGS.items())])
        # -w: pg_ctl polls the server until it accepts connections, for at most -t seconds.
        self._run(str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.folder / "data"),
                  "-l", str(self.folder / "server.log"), "-w", "-t", str(int(timeout_s)),
                  "-o", options, timeout_s=timeout_s + 10)
        deadline = time.monotonic() + timeout_s
        while True:  # and until our role gets in with its password
            try:
                self._admin().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER,
                               password=self.password, dbname="postgres", autocommit=True,
                               connect_timeout=10)

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database ``dbname`` on this server."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database (each test its own: no test sees another's rows): its URL."""
        name = f"{prefix}_{next(self._names)}_{secrets.token_hex(3)}"
        with self._admin() as conn:  # 30-80 ms each here
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (made by :meth:`new_database`), closing what is still
        connected to it: a test's pooled connections and files go with its test."""
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast: clients are disconnected) and remove its files."""
        if (self.folder / "data" / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.folder / "data"),
                      "-m", "fast", "-w", "-t", "30")
        shutil.rmtree(self.folder, ignore_errors=True)
