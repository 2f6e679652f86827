"""`python cli.py flower` as supervisord and `make flower` run it: a real Flower on loopback, with the login
from settings, and its refusal to serve beyond loopback without one."""

from __future__ import annotations

import sys

import httpx
import psutil
import pytest

from agent_service.devtools.processes import started
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import free_port, run_cli, run_in_repo

LOGIN = ("flower-admin", "s3cret-for-the-test")


def test_flower_beyond_loopback_without_a_login_refuses_to_start(settings):
    # Given Flower asked to listen on every interface, with no FLOWER_BASIC_AUTH
    open_flower = settings.model_copy(update={"redis_url": IDLE_REDIS, "flower_address": "0.0.0.0"})
    # When it is started, Then it exits at once with one line (a started Flower would never exit)
    refused = run_cli(open_flower, "flower")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "error: Flower would serve 0.0.0.0:5555 with no login: "
        "set FLOWER_BASIC_AUTH=user:password, or FLOWER_ADDRESS=127.0.0.1"
    ]


def test_flower_address_given_on_the_command_line_is_refused_too(settings):
    refused = run_cli(settings.model_copy(update={"redis_url": IDLE_REDIS}), "flower", "--address=0.0.0.0")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == ["error: set FLOWER_ADDRESS rather than passing --address"]


def test_flower_pages_ask_for_the_login_from_settings(settings):
    # Given Flower started by the launcher with a login, on a loopback port
    port = free_port()
    guarded = settings.model_copy(
        update={"redis_url": IDLE_REDIS, "flower_port": port, "flower_basic_auth": ":".join(LOGIN)}
    )
    command = [sys.executable, "cli.py", "flower"]
    with started(command, env=guarded.as_env(), log_path=LOG_DIR / "flower.log", ready_marker="Visit me at") as flower:
        base = f"http://127.0.0.1:{port}"
        # Then its pages and API answer 401 without the login and 200 with it
        for path in ("/", "/tasks", "/api/tasks"):
            assert httpx.get(base + path, timeout=10).status_code == 401
            assert httpx.get(base + path, auth=LOGIN, timeout=10).status_code == 200
        assert httpx.get(base + "/", auth=(LOGIN[0], "wrong"), timeout=10).status_code == 401
        # and what the README says stays open is open: the health check and Flower's Prometheus metrics
        assert httpx.get(base + "/healthcheck", timeout=10).status_code == 200
        assert httpx.get(base + "/metrics", timeout=10).status_code == 200
        # and the password is not on its command line, for any local user to read in `ps`
        assert LOGIN[1] not in " ".join(psutil.Process(flower.pid).cmdline())
        # and the container's health probe finds it serving
        assert run_cli(guarded, "health", "flower").stdout == "healthy\n"
    # Once it stopped, the probe says it does not answer
    stopped = run_cli(guarded, "health", "flower", "--timeout", "2")
    assert stopped.returncode == 1 and stopped.stderr.startswith(f"unhealthy: Flower at {base}/healthcheck does not")


def design_flower_env(settings, **flower) -> dict[str, str]:
    """The environment of the design's `celery -A worker flower`, with only the FLOWER_* settings given here."""
    env = settings.model_copy(update={"redis_url": IDLE_REDIS}).as_env()
    return {**{name: value for name, value in env.items() if not name.startswith("FLOWER_")}, **flower}


def design_flower(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", "flower", *args]


@pytest.mark.parametrize(
    ("flower", "args"), [({"FLOWER_ADDRESS": "0.0.0.0"}, ()), ({}, ("--address=0.0.0.0",))], ids=["env", "option"]
)
def test_the_designs_flower_command_beyond_loopback_without_a_login_refuses_to_start(settings, flower, args):
    # Given the design's own command, asked (by its environment or its options) to serve every interface
    refused = run_in_repo(design_flower(*args), design_flower_env(settings, **flower))
    # Then it exits with the same one line as `python cli.py flower` (flowerconfig.py)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: Flower would serve 0.0.0.0:5555 with no login: "
        "set FLOWER_BASIC_AUTH=user:password, or FLOWER_ADDRESS=127.0.0.1"
    )


def test_the_designs_flower_command_serves_loopback_by_default_and_asks_for_the_login(settings):
    # Given the design's command with no address given (Flower's own default is every interface) and a login
    port = free_port()
    env = design_flower_env(settings, FLOWER_PORT=str(port), FLOWER_BASIC_AUTH=":".join(LOGIN))
    with started(
        design_flower(), env=env, log_path=LOG_DIR / "flower-design.log", ready_marker="Visit me at"
    ) as flower:
        # Then it listens on loopback only, at the configured port, and its pages ask for the login
        listening = {c.laddr for c in psutil.Process(flower.pid).net_connections() if c.status == psutil.CONN_LISTEN}
        assert {(address.ip, address.port) for address in listening} == {("127.0.0.1", port)}
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/tasks", timeout=10).status_code == 401
        assert httpx.get(base + "/tasks", auth=LOGIN, timeout=10).status_code == 200
