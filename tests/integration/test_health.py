"""The containers' health probes (`python -m agent_service.health`, `python cli.py health`) against real processes:
a consuming worker is healthy, one that does not answer or does not consume is not; beat is healthy while it
saves its schedule; Flower's is in test_flower.py."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from agent_service.devtools.processes import celery_worker, started
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.integration.test_worker_startup import closed_port, fresh_log, log_mentions
from tests.support import make_settings, run_cli, run_in_repo, wait_until

pytestmark = pytest.mark.worker


def probe(settings, *args: str):
    """The cheap probe Docker runs, as the Dockerfile and docker-compose.yml name it."""
    return run_in_repo([sys.executable, "-m", "agent_service.health", *args], settings)


@pytest.mark.usefixtures("worker")
def test_a_consuming_worker_is_healthy_and_a_node_that_does_not_answer_is_not(settings):
    # Given the session's worker, consuming both queues (`-n test@%h`)
    answered = probe(settings, "worker", "--node", f"test@{socket.gethostname()}")
    assert (answered.returncode, answered.stdout) == (0, "healthy\n")
    # And the command line's own form says the same
    assert run_cli(settings, "health", "--node", f"test@{socket.gethostname()}").returncode == 0
    # When the node asked is not running, Then the probe fails within its timeout and says so
    silent = probe(settings, "worker", "--node", "nobody@nowhere", "--timeout", "1")
    assert silent.returncode == 1
    assert silent.stderr == "unhealthy: worker nobody@nowhere did not answer within 1 s\n"


def test_a_worker_is_unhealthy_while_its_broker_does_not_answer(settings):
    unreachable = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    answered = probe(unreachable, "worker", "--timeout", "1")
    assert answered.returncode == 1 and answered.stderr.startswith("unhealthy: the broker does not answer: ")


def test_a_worker_whose_database_does_not_answer_is_alive_but_unhealthy(llm_url):
    # Given a worker whose database does not answer: it holds back the agent-task queue (consumer/readiness.py)
    url = f"postgresql://agent:pw@127.0.0.1:{closed_port()}/agents"
    settings = make_settings(database_url=url, redis_url=IDLE_REDIS, openai_base_url=f"{llm_url}/v1")
    log = fresh_log("worker-health-no-database")
    with celery_worker(env=settings.as_env(), log_path=log, name="health-no-db"):
        wait_until(lambda: log_mentions(log, "database not answering"), what="database error in the log")
        # When Docker probes it, Then it is unhealthy: it answers, but consumes no agent task
        answered = probe(settings, "worker", "--node", f"health-no-db@{socket.gethostname()}")
    assert answered.returncode == 1
    assert answered.stderr == (
        f"unhealthy: worker health-no-db@{socket.gethostname()} is not consuming agent_tasks "
        "(is its database answering?)\n"
    )


def test_beat_is_healthy_while_it_saves_its_schedule_and_unhealthy_once_it_stopped_saving(settings, tmp_path):
    # Given beat started as the image starts it (`python cli.py beat`), its schedule in a folder of the test's
    schedule = tmp_path / "celerybeat-schedule"
    beat_settings = settings.model_copy(update={"redis_url": IDLE_REDIS})
    command = [sys.executable, "cli.py", "beat", f"--schedule={schedule}"]
    with started(command, env=beat_settings.as_env(), log_path=LOG_DIR / "beat-health.log", ready_marker="Starting"):
        wait_until(lambda: list(tmp_path.glob("celerybeat-schedule*")), what="schedule saved")
        # Then the probe finds it healthy
        assert probe(beat_settings, "beat", "--schedule", str(schedule)).returncode == 0
    # When its schedule was last saved longer ago than the probe allows (as if beat had hung or stopped)
    for saved in tmp_path.glob("celerybeat-schedule*"):
        os.utime(saved, (time.time() - 700, time.time() - 700))
    stale = probe(beat_settings, "beat", "--schedule", str(schedule))
    # Then it is unhealthy, and says so
    assert stale.returncode == 1
    assert stale.stderr.startswith("unhealthy: beat last saved its schedule 70") and "is it running?" in stale.stderr
    # And with no schedule at all
    missing = probe(beat_settings, "beat", "--schedule", str(tmp_path / "elsewhere"))
    assert missing.returncode == 1 and "has saved no schedule" in missing.stderr
