"""The database URL as users write it, end to end: `python cli.py init-db` and `celery -A worker worker`
as subprocesses, on the real local PostgreSQL, with databases and roles made for each test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from agent_service.models import Base
from tests.integration.conftest import PG_ROOT
from tests.support import run_cli, run_in_repo

SERVER = PG_ROOT.split("://", 1)[1].split("@", 1)[1]  # host:port
PREFIX = f"agent_service_h_{uuid.uuid4().hex[:6]}_"  # this run's databases and roles, so runs side by side keep theirs


@pytest.fixture
def admin() -> Iterator[Callable[[str], None]]:
    """Runs SQL as the superuser; every database and role this run named (`PREFIX`...) is dropped afterwards."""
    engine = create_engine(f"{PG_ROOT}/postgres", isolation_level="AUTOCOMMIT")

    def run(sql: str) -> None:
        with engine.connect() as connection:
            connection.execute(text(sql))

    yield run
    with engine.connect() as connection:
        made = "SELECT {0} FROM {1} WHERE starts_with({0}, :prefix)"
        for (name,) in connection.execute(text(made.format("datname", "pg_database")), {"prefix": PREFIX}).all():
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        for (name,) in connection.execute(text(made.format("rolname", "pg_roles")), {"prefix": PREFIX}).all():
            connection.execute(text(f'DROP ROLE "{name}"'))
    engine.dispose()


def unique(label: str) -> str:
    return f"{PREFIX}{label}_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"])
def test_init_db_creates_the_missing_database_for_every_postgresql_spelling(admin, scheme):
    # Given the design's URL form on a server without that database yet
    name = unique("new")
    env = {"DATABASE_URL": f"{scheme}://postgres@{SERVER}/{name}"}
    # When init-db runs, Then it creates and migrates the database, and the other commands work on it
    created = run_cli(env, "init-db")
    assert created.returncode == 0, created.stdout + created.stderr
    assert f"created database {name}" in created.stdout and "schema is up to date" in created.stdout
    listed = run_cli(env, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("id\tkind\tstatus\t")
    again = run_cli(env, "init-db")
    assert again.returncode == 0 and "created" not in again.stdout


def test_init_db_as_a_role_that_may_create_databases_creates_one_it_owns(admin):
    role, name = unique("creator"), unique("owned")
    admin(f'CREATE ROLE "{role}" LOGIN CREATEDB')
    result = run_cli({"DATABASE_URL": f"postgresql://{role}@{SERVER}/{name}"}, "init-db")
    assert result.returncode == 0 and f"created database {name}" in result.stdout, result.stdout + result.stderr


def test_init_db_as_a_role_that_may_not_create_databases_says_what_to_run(admin):
    role, name = unique("plain"), unique("wanted")
    admin(f'CREATE ROLE "{role}" LOGIN')
    result = run_cli({"DATABASE_URL": f"postgresql://{role}:pw@{SERVER}/{name}"}, "init-db")
    host, port = SERVER.split(":")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"createdb -h {host} -p {port} -U postgres --owner {role} {name}" in result.stdout
    assert f"CREATE DATABASE {name} OWNER {role};" in result.stdout
    assert "init-db" not in result.stdout  # the hint does not point back at the command that failed


def test_init_db_on_a_server_that_is_down_does_not_point_back_at_init_db():
    result = run_cli({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/agents"}, "init-db")
    assert result.returncode == 1 and result.stdout.startswith("database error: ")
    assert "init-db" not in result.stdout and "Traceback" not in result.stderr


BAD_SETTINGS = [
    ({"DATABASE_URL": "mysql://root:hunter2@db/app"}, "DATABASE_URL has scheme 'mysql'"),
    ({"DATABASE_URL": "hunter2"}, "DATABASE_URL is not a URL"),
    ({"OPENAI_BASE_URL": "https://api.openai.com/v1"}, "OPENAI_API_KEY is required"),
]


@pytest.mark.parametrize("env, message", BAD_SETTINGS)
@pytest.mark.parametrize(
    "command", [("list",), ("init-db",), ("submit", "--agent", "a", "--title", "t", "--user", "u")]
)
def test_cli_reports_bad_settings_in_one_line_and_exits_1(env, message, command):
    result = run_cli(env, *command)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.splitlines() == [result.stdout.strip()] and message in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize("env, message", BAD_SETTINGS)
def test_celery_worker_reports_bad_settings_in_one_line_and_exits_1(env, message):
    result = run_in_repo([sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo"], env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("configuration error: ")
    assert message in result.stderr and "\n" not in result.stderr.strip() and "hunter2" not in result.stderr


def test_the_migrations_build_exactly_the_schema_the_models_map(database_url: str):
    # Given the test database, built by running every migration
    engine = create_engine(database_url)
    # When Alembic compares it with the ORM models
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    # Then nothing differs: a column added to a model has its migration, and the other way round
    assert differences == []
