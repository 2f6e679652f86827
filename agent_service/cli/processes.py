"""Commands that become another process: worker, beat and flower (`celery worker|beat|flower` with the settings'
options, in place of this one), and demo."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from agent_service.cli.output import console
from agent_service.config import Settings, get_settings, is_loopback_host
from agent_service.errors import ConfigurationError
from agent_service.health import BEAT_SCHEDULE

FLOWER_DEFAULT_PORT = 5555  # Flower's own, when no port is given to it


def worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    """The `celery worker` command line for these settings."""
    return [
        "celery",
        "-A",
        "agent_service.worker",
        "worker",
        f"--pool={settings.worker_pool}",
        f"--concurrency={settings.worker_concurrency}",
        "-Q",
        settings.worker_queues,
        "--loglevel=INFO",
        *extra,
    ]


def cmd_worker(args: argparse.Namespace) -> None:
    argv = worker_argv(get_settings(), args.celery_args)
    os.execv(sys.executable, [sys.executable, "-m", *argv])


def beat_argv(extra: list[str]) -> list[str]:
    """The `celery beat` command line: its schedule file where `health beat` looks (a later --schedule wins)."""
    return ["celery", "-A", "agent_service.worker", "beat", "--loglevel=INFO", f"--schedule={BEAT_SCHEDULE}", *extra]


def cmd_beat(args: argparse.Namespace) -> None:
    BEAT_SCHEDULE.parent.mkdir(parents=True, exist_ok=True)
    os.execv(sys.executable, [sys.executable, "-m", *beat_argv(args.celery_args)])


def flower_argv(settings: Settings, extra: list[str]) -> list[str]:
    """The `celery flower` command line for these settings. The logins stay off it, and so out of `ps`:
    Flower reads FLOWER_BASIC_AUTH from its environment."""
    return [
        "celery",
        "-A",
        "agent_service.worker",
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
        *extra,
    ]


def flower_refusal(settings: Settings, extra: list[str]) -> str | None:
    """Why Flower must not start with these settings and extra options, or None. It shows every task's
    arguments and results, so beyond loopback it needs a login."""
    for arg in extra:
        option = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if option in ("address", "port", "basic_auth"):
            return f"set FLOWER_{option.upper()} rather than passing {arg.partition('=')[0]}"
    return _open_flower(settings.flower_address, settings.flower_port, logins=settings.flower_basic_auth is not None)


def flower_config(settings: Settings, *, address: str, port: int, logins: list[str]) -> dict[str, Any]:
    """What `flowerconfig.py` gives Flower when it is started as `celery -A worker flower`: the address, port and
    logins Flower was given (environment, command line), else those of the settings (`.env` too), under the same
    rule as `python cli.py flower`. Flower's own defaults (every interface, port 5555) count as not given.
    Raises: ConfigurationError when it would serve beyond loopback with no login."""
    chosen_logins = logins or (
        settings.flower_basic_auth.get_secret_value().split(",") if settings.flower_basic_auth else []
    )
    config: dict[str, Any] = {
        "address": address or settings.flower_address,
        "port": port if port != FLOWER_DEFAULT_PORT else settings.flower_port,
    }
    problem = _open_flower(config["address"], config["port"], logins=bool(chosen_logins))
    if problem:
        raise ConfigurationError(problem)
    return {**config, "basic_auth": chosen_logins} if chosen_logins else config


def _open_flower(address: str, port: int, *, logins: bool) -> str | None:
    """Why Flower must not serve `address`: beyond loopback, it shows every task's arguments and results."""
    if logins or is_loopback_host(address):
        return None
    fix = "set FLOWER_BASIC_AUTH=user:password, or FLOWER_ADDRESS=127.0.0.1"
    return f"Flower would serve {address or 'every address'}:{port} with no login: {fix}"


def cmd_flower(args: argparse.Namespace) -> int:
    settings = get_settings()
    refusal = flower_refusal(settings, args.celery_args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 1
    env = {**os.environ, **{name: value for name, value in settings.as_env().items() if name.startswith("FLOWER_")}}
    os.execve(sys.executable, [sys.executable, "-m", *flower_argv(settings, args.celery_args)], env)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent_service.devtools.demo import run_demo  # demo imports the configured app; see configured_app

    return run_demo(task_count=args.tasks, console=console)
