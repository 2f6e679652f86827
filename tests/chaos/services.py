"""Private Redis and PostgreSQL servers that a chaos scenario may kill and restart at will.

They run on free ports from a temporary directory, so the machine's shared services (and other test
runs on them) are never touched. They listen on 127.0.0.1, or on an address of the test's own hosts
(`tests/chaos/netns.py`). A missing binary fails loudly: the chaos suite never skips.
"""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from agent_service.devtools.processes import stop_process

PG_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(pattern: str) -> str:
    found = sorted(glob.glob(pattern)) or ([shutil.which(pattern)] if shutil.which(pattern) else [])
    if not found:
        raise RuntimeError(f"chaos suite needs {pattern!r}, which is not installed")
    return found[-1]


def _wait_until(check, *, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout}s")


class RedisServer:
    """A throw-away `redis-server` that keeps nothing on disk: a restart loses every key."""

    def __init__(self, *, password: str | None = None, host: str = "127.0.0.1") -> None:
        self.binary = _binary("redis-server")
        self.port = free_port()
        self.password = password
        self.host = host
        self.process: subprocess.Popen | None = None

    @classmethod
    @contextmanager
    def running(cls, **options: Any) -> Iterator[RedisServer]:
        """A started server for the length of a with-block, killed after it."""
        server = cls(**options)
        server.start()
        try:
            yield server
        finally:
            server.kill()

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url())

    def start(self) -> None:
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            # Off the loopback, Redis refuses clients without a password unless told this is intended: the
            # address is one of the test's own hosts, on this machine.
            "--protected-mode",
            "no" if self.host != "127.0.0.1" else "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_until(lambda: self.client().ping(), what=f"redis on port {self.port}")

    def kill(self) -> None:
        """kill -9: every queued message and unacked delivery is gone."""
        if self.process is not None:
            stop_process(self.process, sig=9)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


class PostgresCluster:
    """A private PostgreSQL cluster (trust auth) owned by the `postgres` OS user, in a temp dir, listening on
    `host`; with `clients` (a network, CIDR), clients from there are trusted too."""

    def __init__(self, *, host: str = "127.0.0.1", clients: str | None = None) -> None:
        self.bin = Path(_binary("/usr/lib/postgresql/*/bin/initdb")).parent
        self.root = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.port = free_port()
        self.host, self.clients = host, clients

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        auth = f"{PG_USER}:{password}" if password else PG_USER
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{database}"

    def init(self) -> None:
        self.sockets.mkdir()
        shutil.chown(self.root, PG_USER)
        shutil.chown(self.sockets, PG_USER)
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "--no-sync")
        if self.clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.clients} trust\n")
        self.start()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses={self.host} -c fsync=off -c max_connections=300"
        )
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        _wait_until(self._answers, what=f"postgres on port {self.port}")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")
        return self.url(name)

    def terminate_connections(self, database: str) -> int:
        [killed] = self.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        return killed

    def execute(self, *statements: str) -> list:
        """Run statements in autocommit on the `postgres` database; returns each one's scalar (or None)."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                results = [connection.execute(text(sql)) for sql in statements]
                return [result.scalar() if result.returns_rows else None for result in results]
        finally:
            engine.dispose()

    def _answers(self) -> bool:
        return self.execute("SELECT 1") == [1]

    def _as_postgres(self, program: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", PG_USER, "--", str(self.bin / program), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )
