"""Private Redis and PostgreSQL servers that a chaos scenario may kill and restart at will, in plain text or
TLS only (with certificates a test CA signs at test time, `TestCertificates`), and private RabbitMQ virtual
hosts on the machine's broker.

The servers run on free ports from a temporary directory, so the machine's shared services (and other test
runs on them) are never touched; only the broker-restart scenarios stop the shared RabbitMQ, for seconds. They
listen on 127.0.0.1, or on an address of the test's own hosts (`tests/chaos/netns.py`). A missing binary fails
loudly: the chaos suite never skips.
"""

from __future__ import annotations

import gc
import glob
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from agent_service.devtools.processes import rabbitmq_vhost, rabbitmqctl, stop_process

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


@dataclass(frozen=True)
class TestCertificates:
    """A test CA (`ca`) and a server certificate it signed (`cert`, `key`) for `localhost` and 127.0.0.1,
    made with the openssl command line in `folder`."""

    __test__ = False  # a helper, not a pytest class
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path) -> TestCertificates:
        folder.mkdir(parents=True, exist_ok=True)
        made = cls(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
        ca_key, request, names = folder / "ca.key", folder / "server.csr", folder / "names.cnf"
        names.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        ca_subject = f"/CN=Test CA {folder.name}"
        _openssl("req", "-x509", "-days", "2", *_NEW_KEY, "-keyout", ca_key, "-out", made.ca, "-subj", ca_subject)
        _openssl("req", *_NEW_KEY, "-keyout", made.key, "-out", request, "-subj", "/CN=localhost")
        _openssl(
            "x509", "-req", "-in", request, "-CA", made.ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", names, "-out", made.cert,
        )  # fmt: skip
        return made


# Elliptic-curve keys: made in milliseconds, where RSA keys take a noticeable share of a second each.
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str | Path) -> None:
    subprocess.run([_binary("openssl"), *map(str, args)], check=True, capture_output=True, timeout=30)


class RedisServer:
    """A throw-away `redis-server` that keeps nothing on disk: a restart loses every key. With `tls`, it
    serves TLS only (no plain-text port), with that certificate; clients check it against `tls.ca`."""

    def __init__(
        self, *, password: str | None = None, tls: TestCertificates | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.binary = _binary("redis-server")
        self.port = free_port()
        self.password = password
        self.tls = tls
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
        if self.tls:
            return f"rediss://{auth}{self.host}:{self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url())

    def start(self) -> None:
        command = [self.binary, *self._listen(), "--bind", self.host, "--save", "", "--appendonly", "no"]
        # Off the loopback, Redis refuses clients without a password unless told this is intended: the address is
        # one of the test's own hosts, on this machine.
        command += ["--protected-mode", "no" if self.host != "127.0.0.1" else "yes", "--daemonize", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_until(lambda: self.client().ping(), what=f"redis on port {self.port}")

    def _listen(self) -> list[str]:
        if not self.tls:
            return ["--port", str(self.port)]
        # --port 0: no plain-text port at all, so every client connection is TLS; no client certificates asked.
        certificate = ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
        return ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no", *certificate]

    def kill(self) -> None:
        """kill -9: every queued message and unacked delivery is gone."""
        # Collect first, while the server still answers: an AsyncResult left in a reference cycle unsubscribes from
        # its Redis result backend when it is collected, and once that server is gone Celery retries the unsubscribe
        # for 20 s on whatever thread the collector next runs on (a later test's event loop, for one).
        gc.collect()
        if self.process is not None:
            stop_process(self.process, sig=9)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def messages(self, queue: str) -> int:
        """Messages waiting in `queue` plus those any worker holds unacknowledged (of every queue)."""
        client = self.client()
        return client.llen(queue) + client.hlen("unacked")


class PostgresCluster:
    """A private PostgreSQL cluster (trust auth) owned by the `postgres` OS user, in a temp dir, listening on
    `host`; with `clients` (a network, CIDR), clients from there are trusted too. With `tls`, it takes TCP
    connections over TLS only (`hostssl`), with that certificate, `postgres` trusted and every other role by
    password; its URLs ask for `sslmode=verify-full` against `tls.ca`."""

    def __init__(
        self, *, tls: TestCertificates | None = None, host: str = "127.0.0.1", clients: str | None = None
    ) -> None:
        self.bin = Path(_binary("/usr/lib/postgresql/*/bin/initdb")).parent
        self.root = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.port = free_port()
        self.tls = tls
        self.host, self.clients = host, clients

    def url(self, database: str = "postgres", *, user: str = PG_USER, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        query = f"?sslmode=verify-full&sslrootcert={self.tls.ca}" if self.tls else ""
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{database}{query}"

    def init(self) -> None:
        self.sockets.mkdir()
        shutil.chown(self.root, PG_USER)
        shutil.chown(self.sockets, PG_USER)
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "--no-sync")
        if self.tls:
            self._serve_tls_only(self.tls)
        if self.clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.clients} trust\n")
        self.start()

    def _serve_tls_only(self, tls: TestCertificates) -> None:
        for source, name in ((tls.cert, "server.crt"), (tls.key, "server.key")):
            shutil.copyfile(source, self.data / name)
            shutil.chown(self.data / name, PG_USER)
        (self.data / "server.key").chmod(0o600)  # the server refuses a key others may read
        rules = [
            "local all all trust",
            f"hostssl all {PG_USER} 127.0.0.1/32 trust",
            "hostssl all all 127.0.0.1/32 scram-sha-256",
        ]
        (self.data / "pg_hba.conf").write_text("\n".join(rules) + "\n")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses={self.host} -c fsync=off -c max_connections=300"
        )
        if self.tls:
            options += " -c ssl=on"  # server.crt and server.key in the data directory, PostgreSQL's defaults
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


class RabbitVhost:
    """A virtual host of its own on the machine's RabbitMQ (127.0.0.1:5672, guest/guest), made and deleted
    with `rabbitmqctl`: its queues and exchanges are this test's alone. `kill` / `start` stop and start the whole
    broker (every vhost: `rabbitmqctl stop_app` / `start_app`), for the scenarios that take it away."""

    def __init__(self) -> None:
        self.name = f"agent_test_{uuid.uuid4().hex[:10]}"
        self.stopped = False
        self.address = ""

    @classmethod
    @contextmanager
    def created(cls) -> Iterator[RabbitVhost]:
        vhost = cls()
        with rabbitmq_vhost(vhost.name) as url:
            vhost.address = url
            try:
                yield vhost
            finally:
                if vhost.stopped:  # a test that failed while the broker was down must not leave it down
                    vhost.start()

    def url(self) -> str:
        return self.address

    def queues(self) -> dict[str, dict[str, Any]]:
        """Each queue's messages (ready and unacknowledged), type and arguments ({name: value}), by name."""
        listing = rabbitmqctl(
            "list_queues", "-p", self.name, "name", "messages", "type", "arguments", "--formatter", "json"
        )
        return {
            queue["name"]: {**queue, "arguments": {name: value for name, _type, value in queue["arguments"]}}
            for queue in json.loads(listing)
        }

    def messages(self, queue: str) -> int:
        """Messages in `queue`, ready or held by a consumer (0 for a queue not declared yet)."""
        return self.queues().get(queue, {}).get("messages", 0)

    def kill(self) -> None:
        """`rabbitmqctl stop_app`: the broker stops (every vhost); quorum queues keep their messages."""
        self.stopped = True
        rabbitmqctl("stop_app")

    def start(self) -> None:
        rabbitmqctl("start_app")
        self.stopped = False
        _wait_until(lambda: socket.create_connection(("127.0.0.1", 5672), timeout=1), what="RabbitMQ on 5672")

    def restart(self) -> None:
        self.kill()
        self.start()
