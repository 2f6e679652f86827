"""The package as another project uses it: `pip install` of this checkout into a fresh virtual environment,
then, from a folder outside the checkout, the console script runs a worker and `from agent_service import
create_agent_task` submits a task that it completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agent_service.config import Settings
from agent_service.devtools.processes import ROOT, started
from agent_service.models import TaskStatus
from tests.integration.conftest import REDIS_SERVER
from tests.support import add_agent, wait_for_final

INSTALLED_REDIS = f"{REDIS_SERVER}/{os.environ.get('TEST_INSTALLED_REDIS_DB', '10')}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the package installed from this checkout (not editable). Its dependencies
    come from the test run's own environment through a .pth file, so nothing is downloaded; `pip check` then
    proves that the package's declared requirements are all met by them (pip too comes from there: a pip of
    the new environment's own would bring an older setuptools with it, ahead of the pinned build backend)."""
    folder = tmp_path_factory.mktemp("consumer")
    # A copy of the checkout to build from: setuptools writes build/ and *.egg-info beside the sources it builds.
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".local", "build", "*.egg-info"))
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)]
    subprocess.run(pip, check=True, capture_output=True)
    subprocess.run([python, "-m", "pip", "check"], check=True, capture_output=True)
    return venv


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The other project's folder: outside the checkout, so nothing can be imported from it."""
    folder = tmp_path / "webapp"
    folder.mkdir()
    return folder


@pytest.fixture
def installed_env(settings: Settings) -> dict[str, str]:
    redis.Redis.from_url(INSTALLED_REDIS).flushdb()
    return {"PATH": "/usr/bin:/bin", **settings.model_copy(update={"redis_url": INSTALLED_REDIS}).as_env()}


@pytest.fixture
def installed_worker(installed: Path, project: Path, installed_env: dict[str, str]) -> Iterator[None]:
    command = [str(installed / "bin" / "agent-service"), "worker", "-n", "installed@%h"]
    with started(command, env=installed_env, log_path=project / "worker.log", cwd=project):
        yield


def test_the_installed_package_is_imported_from_the_environment_not_from_the_checkout(installed: Path, project: Path):
    # Given the installed package, when another project imports it, then it comes from site-packages.
    probe = "import agent_service, agent_service.store.schema as s; print(agent_service.__file__, s.MIGRATIONS)"
    located = subprocess.run(
        [installed / "bin" / "python", "-c", probe], cwd=project, capture_output=True, text=True, check=True
    ).stdout.split()
    assert all(path.startswith(str(installed)) for path in located)
    assert Path(located[1], "versions").is_dir()  # the migrations travel with the package


@pytest.mark.worker
@pytest.mark.usefixtures("installed_worker")
def test_a_task_submitted_from_another_project_is_completed_by_the_installed_worker(
    installed: Path, project: Path, installed_env: dict[str, str], session_factory
):
    # Given an agent, and a worker run by the installed console script from the project's folder
    agent = add_agent(session_factory, prefix="installed")
    init = subprocess.run(
        [installed / "bin" / "agent-service", "init-db"], cwd=project, env=installed_env, capture_output=True
    )
    assert init.returncode == 0, init.stderr  # the migrations are found inside the installed package
    # When the project submits a task the way the design's Python users do
    submit = (
        "import json, sys; from agent_service import create_agent_task; "
        "print(create_agent_task(json.loads(sys.argv[1])))"
    )
    task_data = {"agent_id": str(agent.id), "user_id": "webapp", "title": "Say hello from the installed package"}
    created = subprocess.run(
        [installed / "bin" / "python", "-c", submit, json.dumps(task_data)],
        cwd=project,
        env=installed_env,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    task_id = created.stdout.strip()
    # Then the installed worker completes it, and the row in PostgreSQL says so
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert task.status is TaskStatus.COMPLETED and task.result
