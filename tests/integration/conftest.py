"""Fixtures on real services: a PostgreSQL database migrated by Alembic, Redis databases and a real
`celery worker` process, and one on RabbitMQ for the tests that run on both brokers (the bundled LLM server is
in tests/conftest.py). A missing service fails the
run; it never skips."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from agent_service.config import Settings
from agent_service.database import create_empty_database, make_engine
from agent_service.devtools.processes import celery_worker
from agent_service.llm.runners import BackgroundEventLoop, LLMRunner, RunRequest, make_runner
from agent_service.models import Agent
from agent_service.store.schema import init_db
from agent_service.worker import AgentServiceCelery, create_celery_app
from tests.chaos.harness import RABBITMQ, REDIS
from tests.chaos.services import RabbitVhost
from tests.support import add_agent, make_settings

# Overridable so that two test runs on one machine do not share a database or a broker.
PG_ROOT = os.environ.get("TEST_PG_ROOT", "postgresql+psycopg2://postgres@127.0.0.1:5432")
TEST_DB = os.environ.get("TEST_DB_NAME", "agent_service_test")
# Parallel runs on one machine each take their own Redis port or databases.
REDIS_SERVER = f"redis://127.0.0.1:{os.environ.get('TEST_REDIS_PORT', '6379')}"
WORKER_REDIS = f"{REDIS_SERVER}/{os.environ.get('TEST_REDIS_DB', '15')}"
IDLE_REDIS = f"{REDIS_SERVER}/{os.environ.get('TEST_IDLE_REDIS_DB', '14')}"  # no worker reads it
ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / ".local" / "test-logs"


@pytest.fixture(scope="session")
def database_url() -> str:
    url = create_empty_database(PG_ROOT, TEST_DB)
    init_db(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url: str, llm_url: str) -> Settings:
    return make_settings(database_url=database_url, redis_url=WORKER_REDIS, openai_base_url=f"{llm_url}/v1")


@pytest.fixture(scope="session")
def app(settings: Settings):
    redis.Redis.from_url(WORKER_REDIS).flushdb()
    return create_celery_app(settings)


@pytest.fixture(scope="session")
def idle_app(settings: Settings):
    """An app whose broker no worker reads: what it publishes stays in Redis for the test to see."""
    return create_celery_app(settings.model_copy(update={"redis_url": IDLE_REDIS}))


@pytest.fixture
def idle_redis(idle_app) -> redis.Redis:
    client = redis.Redis.from_url(IDLE_REDIS)
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def metrics_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def worker_log() -> Path:
    return LOG_DIR / "worker.log"


@pytest.fixture(scope="session")
def worker(app, settings: Settings, metrics_port: int, worker_log: Path) -> Iterator[None]:
    """A real `celery -A worker worker` process in the default (production) configuration."""
    env = {**settings.as_env(), "METRICS_PORT": str(metrics_port)}
    with celery_worker(env=env, log_path=worker_log, name="test"):
        yield


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[RabbitVhost]:
    with RabbitVhost.created() as vhost:
        yield vhost


@pytest.fixture(scope="session")
def rabbitmq_app(settings: Settings, rabbitmq_vhost: RabbitVhost) -> Iterator[AgentServiceCelery]:
    """An app whose broker is a RabbitMQ vhost of its own (results and shared controls stay on the session's
    Redis), with a real worker on it."""
    on_rabbitmq = settings.model_copy(update={"celery_broker_url": rabbitmq_vhost.url()})
    with celery_worker(env=on_rabbitmq.as_env(), log_path=LOG_DIR / "worker-rabbitmq.log", name="rabbitmq"):
        yield create_celery_app(on_rabbitmq)


@pytest.fixture(scope="session", params=[REDIS, RABBITMQ])
def broker_app(request):
    """The app of a running worker on each broker in turn: the session's worker on Redis, then one on RabbitMQ;
    the worker-level tests that take it run on both."""
    if request.param == REDIS:
        request.getfixturevalue("worker")
        return request.getfixturevalue("app")
    return request.getfixturevalue("rabbitmq_app")


@pytest.fixture(scope="session")
def session_factory(app) -> sessionmaker[Session]:
    return app.services.session_factory


@pytest.fixture
def agent(session_factory) -> Agent:
    """A committed, active agent with a unique name."""
    return add_agent(session_factory)


@pytest.fixture
def db_session(database_url: str, settings: Settings) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test, whatever it committed."""
    engine = make_engine(settings)
    with engine.connect() as connection:
        transaction = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()
    engine.dispose()


@pytest.fixture
def rollback_factory(db_session: Session) -> sessionmaker[Session]:
    """A session factory whose commits land in `db_session`'s rolled-back transaction."""
    return sessionmaker(bind=db_session.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False)


@pytest.fixture(scope="module")
def runner(settings: Settings) -> Iterator[LLMRunner]:
    """An in-process runner of real calls to the bundled LLM server, one per module: the client keeps its
    connections on the runner's loop."""
    llm = make_runner(settings.model_copy(update={"llm_process": False}))
    yield llm
    llm.close()


@pytest.fixture
def llm_with(settings: Settings) -> Iterator[Callable[[RunRequest], BackgroundEventLoop]]:
    """Makes an in-process LLM runner whose calls go to the given stand-in `run_llm`."""
    loops: list[BackgroundEventLoop] = []

    def make(run_llm: RunRequest) -> BackgroundEventLoop:
        loops.append(BackgroundEventLoop(settings, run_llm, name="test-llm-loop"))
        return loops[-1]

    yield make
    for loop in loops:
        loop.close()
