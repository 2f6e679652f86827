"""Health probes for a container's one process, as Docker's HEALTHCHECK and Compose's `healthcheck` run them:
`python -m agent_service.health worker|beat|flower|api` (also `agent-service health ...`) exits 0 when the process does
its job, else 1 with one line saying why.

- worker: this host's worker (`celery@HOSTNAME`, Celery's default node name) answers a control message on the
  broker and consumes every queue of WORKER_QUEUES. A worker whose database does not answer has taken the
  agent-task queue off (consumer/readiness.py), so it is alive but not consuming: unhealthy.
- beat: beat has saved its schedule file lately. Celery's beat saves it every 3 minutes while it ticks, and it
  ticks at least once per HEALTH_CHECK_INTERVAL_SECONDS.
- flower: Flower's `/healthcheck` answers (it needs no login).
- api: the HTTP API's `/healthz` answers.

Docker runs the probe every 30 s in every container, so each is cheap: this module loads the settings and Celery's
control client only (about 0.3 s of CPU, where the whole command line loads in 1 s), and asks one control message,
one file's age or one HTTP request.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from celery import Celery
from celery.utils.nodenames import default_nodename
from kombu.exceptions import OperationalError

from agent_service.config import LOCAL_DATA_DIR, Settings, get_settings
from agent_service.errors import ConfigurationError

BEAT_SCHEDULE = LOCAL_DATA_DIR / "celerybeat-schedule"  # `python cli.py beat` keeps its schedule here
BEAT_MAX_AGE_SECONDS = 600.0  # three of Celery's 3-minute saves, and some
DEFAULT_TIMEOUT_SECONDS = 5.0


class Probe(StrEnum):
    """The processes a container runs, each with its own check."""

    WORKER = "worker"
    BEAT = "beat"
    FLOWER = "flower"
    API = "api"


def worker_problem(settings: Settings, *, node: str, timeout: float) -> str | None:
    """Why the worker `node` is not taking tasks now, in one line; None when it answers on the broker and
    consumes every queue of WORKER_QUEUES."""
    if settings.broker_url.startswith("filesystem"):
        return "the embedded filesystem broker carries no control messages: set REDIS_URL or CELERY_BROKER_URL"
    client = Celery(broker=settings.broker_url, set_as_current=False)
    try:
        replies = client.control.inspect(destination=[node], timeout=timeout).active_queues() or {}
    except (OperationalError, OSError) as exc:
        return f"the broker does not answer: {exc}"
    finally:
        client.close()
    if node not in replies:
        return f"worker {node} did not answer within {timeout:g} s"
    consumed = {queue["name"] for queue in replies[node]}
    missing = [name for name in settings.worker_queues.split(",") if name.strip() not in consumed]
    if missing:
        return f"worker {node} is not consuming {', '.join(missing)} (is its database answering?)"
    return None


def beat_problem(schedule: Path, *, max_age: float) -> str | None:
    """Why beat looks stopped, in one line; None when its schedule file (under whichever suffix the dbm module
    gives it) was saved within `max_age` seconds."""
    saved = [path.stat().st_mtime for path in schedule.parent.glob(f"{schedule.name}*")]
    if not saved:
        return f"beat has saved no schedule at {schedule} (is it running, with this --schedule?)"
    age = time.time() - max(saved)
    if age > max_age:
        return f"beat last saved its schedule {age:.0f} s ago (over {max_age:g} s): is it running?"
    return None


def flower_problem(settings: Settings, *, timeout: float) -> str | None:
    """Why Flower does not serve, in one line; None when its `/healthcheck` answers OK."""
    return _http_problem("Flower", settings.flower_address, settings.flower_port, "/healthcheck", timeout=timeout)


def api_problem(settings: Settings, *, timeout: float) -> str | None:
    """Why the HTTP API does not serve, in one line; None when its `/healthz` answers OK. (Its `/readyz`, which
    also asks the database and the broker, is for a load balancer: a container is not restarted for them.)"""
    return _http_problem("the HTTP API", settings.api_address, settings.api_port, "/healthz", timeout=timeout)


def _http_problem(name: str, address: str, port: int, path: str, *, timeout: float) -> str | None:
    # A server on every interface answers on loopback too.
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"{name} at {url} answered {response.status}"
    except OSError as exc:
        return f"{name} at {url} does not answer: {exc}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("probe", nargs="?", choices=[probe.value for probe in Probe], default=Probe.WORKER.value)
    parser.add_argument("--node", help="worker: the node to ask (default: celery@HOSTNAME, Celery's own)")
    parser.add_argument(
        "--schedule",
        type=Path,
        default=BEAT_SCHEDULE,
        help="beat: its schedule file (default: .local/celerybeat-schedule)",
    )
    parser.add_argument(
        "--max-age", type=float, default=BEAT_MAX_AGE_SECONDS, help="beat: the schedule's oldest healthy save, seconds"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait for an answer")


def run(args: argparse.Namespace) -> int:
    """Runs the probe `args` name; prints `healthy` (exit 0) or `unhealthy: WHY` to standard error (exit 1)."""
    checks: dict[str, Callable[[], str | None]] = {
        Probe.WORKER: lambda: worker_problem(
            get_settings(), node=args.node or default_nodename(None), timeout=args.timeout
        ),
        Probe.BEAT: lambda: beat_problem(args.schedule, max_age=args.max_age),
        Probe.FLOWER: lambda: flower_problem(get_settings(), timeout=args.timeout),
        Probe.API: lambda: api_problem(get_settings(), timeout=args.timeout),
    }
    try:
        problem = checks[args.probe]()
    except ConfigurationError as exc:
        problem = f"configuration error: {exc}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_service.health", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
