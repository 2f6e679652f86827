"""`python cli.py flower` as supervisord and `make flower` run it: a real Flower on loopback, with the login
from settings, and its refusal to serve beyond loopback without one."""

from __future__ import annotations

import sys

import httpx
import psutil

from agent_service.devtools.processes import started
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import free_port, run_cli

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
