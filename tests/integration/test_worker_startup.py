"""A worker started before its database: it says what is wrong (in its log and in a notification), takes no
agent task while the database does not answer, and takes them once it does (and notifies that); a worker that
cannot get ready is notified too. Real `celery worker` processes on Redis and PostgreSQL, a webhook receiver on
loopback."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from agent_service.database import create_empty_database, session_scope
from agent_service.devtools.processes import celery_worker
from agent_service.messaging.publisher import publish_tasks
from agent_service.models import Agent, Task, TaskStatus
from agent_service.store.schema import init_db
from agent_service.worker import create_celery_app
from tests.integration.conftest import IDLE_REDIS, LOG_DIR, PG_ROOT
from tests.support import make_settings, wait_for_final, wait_until
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.worker


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe socket is closed


def fresh_log(name: str) -> Path:
    path = LOG_DIR / f"{name}.log"
    path.unlink(missing_ok=True)
    return path


def log_mentions(path: Path, *fragments: str) -> bool:
    return all(fragment in path.read_text() for fragment in fragments)


def test_worker_without_its_database_says_why_and_leaves_agent_messages_queued(idle_app, idle_redis, llm_url):
    # Given a database URL (with a password) where nothing listens
    url = f"postgresql://agent:s3cret-pw@127.0.0.1:{closed_port()}/agents"
    settings = make_settings(database_url=url, redis_url=IDLE_REDIS, openai_base_url=f"{llm_url}/v1")
    log = fresh_log("worker-no-database")
    # When a worker starts on it and an agent-task message arrives
    with celery_worker(env=settings.as_env(), log_path=log, name="no-database"):
        wait_until(lambda: log_mentions(log, "database not answering"), what="database error in the log")
        publish_tasks(idle_app, [uuid.uuid4()])
        time.sleep(3)  # more than one probe interval
        # Then one line names DATABASE_URL and the error, hides the password, and the message stays queued
        [line] = [line for line in log.read_text().splitlines() if "database not answering" in line]
        assert "DATABASE_URL=postgresql+psycopg2://agent:***@127.0.0.1" in line and "Connection refused" in line
        assert "s3cret-pw" not in log.read_text()
        assert idle_redis.llen("agent_tasks") == 1


@pytest.fixture
def late_database_name() -> str:
    name = f"agent_service_late_{uuid.uuid4().hex[:8]}"
    yield name
    admin = create_engine(f"{PG_ROOT}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for database in (name, f"{name}_staging"):
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def test_worker_takes_agent_tasks_once_a_late_database_answers(
    idle_app, idle_redis, llm_url, late_database_name, receiver
):
    # Given a worker started on a database that does not exist yet, and a message queued for a task
    settings = make_settings(
        database_url=f"{PG_ROOT}/{late_database_name}",
        redis_url=IDLE_REDIS,
        openai_base_url=f"{llm_url}/v1",
        alert_webhook_url=receiver.url,
        alert_webhook_secret="whsec-startup",
        tool_allow_private_addresses=True,
    )
    log = fresh_log("worker-late-database")
    task_id = uuid.uuid4()
    with celery_worker(env=settings.as_env(), log_path=log, name="late-database"):
        wait_until(lambda: log_mentions(log, "does not exist"), what="database error in the log")
        # (and a notification says so, from this host)
        receiver.wait_for(lambda: receiver.events("database_unreachable") != [])
        [unreachable] = receiver.events("database_unreachable")
        assert unreachable["severity"] == "critical" and late_database_name in unreachable["text"]
        publish_tasks(idle_app, [task_id])
        # When the database appears, migrated and holding the task (built aside, then renamed in one step)
        staging_url = create_empty_database(PG_ROOT, f"{late_database_name}_staging")
        init_db(staging_url)
        add_queued_task(staging_url, task_id)
        rename_database(f"{late_database_name}_staging", late_database_name)
        # Then the worker consumes the message and completes the task
        app = create_celery_app(settings)
        [task] = wait_for_final(app.services.session_factory, [str(task_id)], timeout=30).values()
        app.services.engine.dispose()
        assert task.status == TaskStatus.COMPLETED and task.attempts == 1
        assert idle_redis.llen("agent_tasks") == 0 and log_mentions(log, "database answers")
        receiver.wait_for(lambda: receiver.events("database_reachable") != [])


def add_queued_task(database_url: str, task_id: uuid.UUID) -> None:
    app = create_celery_app(make_settings(database_url=database_url))
    with session_scope(app.services.session_factory) as session:
        agent = Agent(name="late", prompt="Be brief.", model="gpt-4o-mini", temperature=0.1, max_tokens=50)
        session.add(agent)
        session.flush()
        session.add(Task(id=task_id, title="waited for its database", agent_id=agent.id, user_id="u", status="queued"))
    app.services.engine.dispose()


def rename_database(old: str, new: str) -> None:
    admin = create_engine(f"{PG_ROOT}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{old}" RENAME TO "{new}"'))
    admin.dispose()


def test_a_worker_process_that_cannot_get_ready_is_notified(idle_redis, llm_url, settings, receiver):
    # Given the metrics port taken by another process
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        configured = settings.model_copy(
            update={
                "redis_url": IDLE_REDIS,
                "metrics_port": taken.getsockname()[1],
                "alert_webhook_url": SecretStr(receiver.url),
                "alert_webhook_secret": SecretStr("whsec-startup"),
                "tool_allow_private_addresses": True,
            }
        )
        # When a worker starts on it
        with celery_worker(env=configured.as_env(), log_path=fresh_log("worker-port-taken"), name="port-taken"):
            # Then a critical notification names the failure, from this host
            receiver.wait_for(lambda: receiver.events("worker_start_failed") != [], timeout=60)
    [failed] = receiver.events("worker_start_failed")
    assert failed["severity"] == "critical" and "Address already in use" in failed["summary"]


def test_a_worker_raises_its_open_file_limit_for_itself_and_its_llm_process_and_says_when_it_is_too_low(
    idle_redis, llm_url, settings
):
    # Given a worker started under a soft open-file limit of 256 and a hard one of 1024, with the default
    # LLM_CONCURRENCY (whose calls at once may hold more files than that at full load)
    configured = settings.model_copy(update={"redis_url": IDLE_REDIS})
    log = fresh_log("worker-open-files")
    limit = ("prlimit", "--nofile=256:1024")
    with celery_worker(env=configured.as_env(), log_path=log, name="open-files", through=limit) as worker:
        # Then the worker and the LLM process it started may open 1024 files each
        main = psutil.Process(worker.pid)
        wait_until(lambda: llm_processes(main) != [], what="the worker's LLM process")
        [llm_process] = llm_processes(main)
        assert main.rlimit(psutil.RLIMIT_NOFILE) == (1024, 1024) == llm_process.rlimit(psutil.RLIMIT_NOFILE)
        # And its log says the limit is still below what LLM_CONCURRENCY may need, and what to do
        wait_until(lambda: log_mentions(log, "open-file limit (1024) is below"), what="the warning")
        assert log_mentions(log, f"LLM_CONCURRENCY={configured.llm_concurrency}", "raise the hard limit")


def llm_processes(worker: psutil.Process) -> list[psutil.Process]:
    return [child for child in worker.children() if "agent_service.llm.process" in " ".join(child.cmdline())]
