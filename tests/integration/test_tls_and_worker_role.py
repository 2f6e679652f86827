"""Encrypted connections and least privilege, proven on servers of the test's own: a PostgreSQL that takes TCP
connections over TLS only and a Redis with no plain-text port, both with certificates a test CA signed at
test time. A real worker connects as the role `deploy/postgres/worker-role.sql` creates, checking both
servers' certificates (`sslmode=verify-full`, `rediss://` with `ssl_cert_reqs=required`), and runs tasks end to
end: broker, results, shared limits and live output over TLS. A wrong CA, or a server without TLS, stops a
worker at start with one line naming the setting."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.result import AsyncResult
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from agent_service.config import Settings
from agent_service.consumer.preflight import tls_refusal
from agent_service.devtools.processes import ROOT, celery_worker, worker_command
from agent_service.live.events import EventKind, LiveEvent, follower_key
from agent_service.messaging.publisher import publish_tasks
from agent_service.messaging.routing import SWEEP_TASK_NAME
from agent_service.models import TaskStatus
from agent_service.store.schema import init_db
from agent_service.tasks import create_agent_task, create_agent_tasks, follow_agent_task, group_progress
from agent_service.worker import create_celery_app
from tests.chaos.services import PostgresCluster, RedisServer, TestCertificates
from tests.integration.conftest import IDLE_REDIS, LOG_DIR, PG_ROOT, TEST_DB
from tests.support import add_agent, free_port, make_settings, wait_for_final, wait_until

pytestmark = pytest.mark.worker

ROLE_SQL = ROOT / "deploy" / "postgres" / "worker-role.sql"
WORKER_ROLE, WORKER_PASSWORD = "agent_worker", "worker-pw-5e1d"
DATABASE = "agents"
RPM = 120  # the shared rate limit: two calls a second, one at once (RATE_LIMIT_BURST_SECONDS 0.5)
# Five calls at that rate span 2 s less the burst; 0.3 s of slack for when the server logs them.
FIVE_CALLS_SPAN_SECONDS = 4 * 60 / RPM - 0.5 - 0.3


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> TestCertificates:
    return TestCertificates.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory) -> Path:
    """A CA that signed neither server's certificate."""
    return TestCertificates.make(tmp_path_factory.mktemp("other-ca")).ca


@pytest.fixture(scope="module")
def tls_postgres(certificates) -> Iterator[PostgresCluster]:
    """TLS-only PostgreSQL holding the service's database, migrated by its owner, with the worker role."""
    cluster = PostgresCluster(tls=certificates)
    cluster.init()
    try:
        init_db(cluster.create_database(DATABASE))
        psql = [str(cluster.bin / "psql"), cluster.url(DATABASE).replace("+psycopg2", "", 1), "-q"]
        subprocess.run([*psql, "-v", f"worker_password={WORKER_PASSWORD}", "-f", ROLE_SQL], check=True, timeout=60)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def tls_redis(certificates) -> Iterator[RedisServer]:
    with RedisServer.running(tls=certificates) as server:
        yield server


@pytest.fixture(scope="module")
def worker_settings(tls_postgres, tls_redis, llm_url) -> Settings:
    """The worker's: the least-privileged role, both servers' certificates checked, a shared rate limit."""
    return make_settings(
        database_url=tls_postgres.url(DATABASE, user=WORKER_ROLE, password=WORKER_PASSWORD),
        redis_url=tls_redis.url(),
        openai_base_url=f"{llm_url}/v1",
        rate_limits_enabled=True,
        llm_rate_limits={"gpt-4o-mini": {"rpm": RPM}},
        tool_allow_private_addresses=True,
    )


@pytest.fixture(scope="module")
def owner_app(worker_settings, tls_postgres):
    """The submitting side's app: the tables' owner, over TLS as well."""
    app = create_celery_app(worker_settings.model_copy(update={"database_url": tls_postgres.url(DATABASE)}))
    yield app
    app.services.engine.dispose()


def test_a_worker_runs_tasks_end_to_end_over_verified_tls_under_the_least_privileged_role(
    worker_settings, owner_app, tls_postgres, tls_redis, llm, tool_url, tool_server
):
    # Given a worker on TLS-only servers, as the worker role, with a shared rate limit
    session_factory = owner_app.services.session_factory
    agent = add_agent(session_factory, prefix="tls")
    token = f"tls-{uuid.uuid4().hex[:8]}"
    with celery_worker(env=worker_settings.as_env(), log_path=LOG_DIR / "tls-worker.log", name="tls"):
        # When a followed task, a group of five and an api task that calls a tool are submitted
        followed_id, events = follow_while_running(owner_app, tls_redis, agent, f"{token} followed")
        group_id = f"group-{token}"
        items = [{"title": f"{token} #{i}", "agent_id": str(agent.id), "user_id": "u-tls"} for i in range(5)]
        group_ids = create_agent_tasks(items, app=owner_app, group=group_id)
        api_id = submit_api_task(owner_app, session_factory, llm, tool_url, token)
        # Then each message's outcome comes back through the result backend
        outcomes = {i: AsyncResult(i, app=owner_app).get(timeout=60) for i in [followed_id, *group_ids, api_id]}
        # and the sweeper (a system task) runs as the same role
        owner_app.signature(SWEEP_TASK_NAME).delay().get(timeout=30)
        # and every connection the worker keeps to PostgreSQL is TLS (pg_stat_ssl), to Redis too (it has no plain port)
        [encryption] = tls_postgres.execute(
            "SELECT string_agg(DISTINCT s.ssl::text || ' ' || s.version, ',') FROM pg_stat_ssl s "
            f"JOIN pg_stat_activity a USING (pid) WHERE a.usename = '{WORKER_ROLE}'"
        )
    assert {outcome["status"] for outcome in outcomes.values()} == {"completed"}
    rows = wait_for_final(session_factory, list(outcomes))
    assert {(row.status, row.attempts) for row in rows.values()} == {(TaskStatus.COMPLETED, 1)}
    assert encryption in ("true TLSv1.3", "true TLSv1.2")
    assert tls_redis.client().config_get("port") == {"port": "0"}
    # And the follower read the task's tokens as the LLM process streamed them (its own Redis client)
    assert [events[0].kind, events[-1].kind] == [EventKind.STARTED, EventKind.ENDED]
    assert "".join(event.data["text"] for event in events if event.kind is EventKind.TOKEN) == rows[followed_id].result
    # And the group ended, the api task's tool was called, and the shared limit spaced the group's calls
    assert group_progress(group_id, app=owner_app).ended_at is not None
    assert tool_server.count(path=f"/echo/{token}") == 1
    received = sorted(request["at"] for request in llm.requests(f"{token} #"))
    assert len(received) == 5 and received[-1] - received[0] >= FIVE_CALLS_SPAN_SECONDS
    # And PostgreSQL refused the worker nothing
    assert "permission denied" not in tls_postgres.log.read_text()


def follow_while_running(app, tls_redis, agent, title: str) -> tuple[str, list[LiveEvent]]:
    """A task followed from before a worker has it (its message first went to a database no worker reads) until
    it ends; its id and the events read."""
    idle = create_celery_app(app.services.settings.model_copy(update={"redis_url": tls_redis.url(db=1)}))
    task_id = create_agent_task({"title": title, "agent_id": str(agent.id), "user_id": "u-tls"}, app=idle)
    idle.services.engine.dispose()
    events: list[LiveEvent] = []
    following = threading.Thread(
        target=lambda: events.extend(follow_agent_task(task_id, timeout=60, app=app)), daemon=True
    )
    following.start()
    wait_until(lambda: app.services.redis.exists(follower_key(task_id)), what="follower mark")
    publish_tasks(app, [uuid.UUID(task_id)])
    following.join(timeout=60)
    return task_id, events


def submit_api_task(app, session_factory, llm, tool_url: str, token: str) -> str:
    """An api task whose model calls the echo tool once, then answers."""
    echo = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    tool = {
        "name": "echo",
        "description": "echoes",
        "parameters": echo,
        "method": "GET",
        "url": f"{tool_url}/echo/{token}",
    }
    agent = add_agent(
        session_factory, prefix="tls-api", kind="api", tools=[tool], settings={"allowed_hosts": ["127.0.0.1"]}
    )
    directive = llm.add_script(
        token, [{"tool_calls": [{"name": "echo", "arguments": {"note": "hi"}}]}, {"content": "ok"}]
    )
    item = {"title": f"{token} api", "description": directive, "agent_id": str(agent.id), "user_id": "u-tls"}
    return create_agent_task(item, app=app)


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE tasks",
        "ALTER TABLE tasks ADD COLUMN note text",
        "CREATE TABLE notes (id int)",
        "TRUNCATE tasks",
        "DELETE FROM tasks",
        "UPDATE alembic_version SET version_num = 'x'",
        "INSERT INTO agents (name, prompt, model) VALUES ('x', 'x', 'x')",
    ],
)
def test_the_worker_role_can_change_no_schema_and_no_row_beyond_its_work(worker_settings, statement):
    engine = create_engine(worker_settings.database_url)
    try:
        with engine.connect() as connection, pytest.raises(ProgrammingError) as refused:
            connection.execute(text(statement))
    finally:
        engine.dispose()
    assert refused.value.orig.pgcode == "42501"  # insufficient_privilege


@pytest.mark.parametrize("setting", ["DATABASE_URL", "REDIS_URL"])
def test_a_wrong_ca_stops_the_worker_at_start_with_one_line_naming_the_setting(
    worker_settings, certificates, wrong_ca, setting
):
    # Given a worker whose DATABASE_URL or REDIS_URL checks the server's certificate against a CA that did not sign it
    url = getattr(worker_settings, setting.lower()).replace(str(certificates.ca), str(wrong_ca))
    env = worker_settings.model_copy(update={setting.lower(): url}).as_env()
    # When it starts
    started = subprocess.run(
        worker_command(name="tls-refused"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    # Then it stops, with one line naming the setting and the failure, its password hidden, and no traceback
    output = started.stdout + started.stderr
    [line] = [line for line in output.splitlines() if setting in line]
    assert started.returncode == 1 and line.startswith(f"{setting}: TLS failed: ")
    assert "certificate verify failed" in line and str(wrong_ca) in line
    assert "Traceback" not in output and WORKER_PASSWORD not in output


@pytest.mark.parametrize(
    ("setting", "reason"),
    [("DATABASE_URL", "server does not support SSL, but SSL was required"), ("REDIS_URL", "no TLS handshake")],
)
def test_a_server_without_tls_where_the_url_requires_it_is_refused_naming_the_setting(worker_settings, setting, reason):
    # Given a URL requiring TLS, with the CA, to a server that serves none (the machine's shared PostgreSQL, the
    # tests' plain-text Redis)
    plain = {"DATABASE_URL": f"{PG_ROOT}/{TEST_DB}", "REDIS_URL": IDLE_REDIS.replace("redis://", "rediss://", 1)}
    query = getattr(worker_settings, setting.lower()).partition("?")[2]
    # When the check a worker makes at start runs on it
    refusal = start_up_refusal(worker_settings.model_copy(update={setting.lower(): f"{plain[setting]}?{query}"}))
    # Then it refuses, naming the setting and why
    assert refusal is not None and refusal.startswith(f"{setting}: ") and reason in refusal


def test_a_tls_server_that_is_down_is_left_to_the_usual_retries(worker_settings, tls_postgres, tls_redis):
    # Given TLS URLs to ports where nothing listens
    nowhere = free_port()
    settings = worker_settings.model_copy(
        update={
            "database_url": worker_settings.database_url.replace(f":{tls_postgres.port}/", f":{nowhere}/"),
            "redis_url": worker_settings.redis_url.replace(f":{tls_redis.port}/", f":{nowhere}/"),
        }
    )
    # When the check a worker makes at start runs on them, then it lets the worker start: it waits for its
    # database (consumer.readiness) and its broker (Celery) as without TLS
    assert start_up_refusal(settings) is None


def start_up_refusal(settings: Settings) -> str | None:
    app = create_celery_app(settings)
    try:
        return tls_refusal(settings, app.services.engine)
    finally:
        app.services.engine.dispose()
