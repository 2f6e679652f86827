"""The shipped alert rules and dashboard against a real worker and a real Prometheus (Debian's `prometheus`):
every metric and label a rule or a panel names is served by the worker's exporter once the worker has done
what they watch, every expression parses in Prometheus, and an LLM outage (the bundled server failing calls)
fires its alert in Prometheus's /api/v1/alerts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
import redis
import yaml

from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker
from agent_service.models import Task, TaskStatus
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.prometheus import (
    ALERT_RULES,
    free_port,
    grouping_labels,
    prometheus_server,
    scrape,
    selectors,
    shipped_expressions,
)
from tests.support import add_agent, run_cli, wait_for_final, wait_until

LIMITED_MODEL = "gpt-4o"  # one call a second: a second call right after the first waits for its slot
# Labels Prometheus itself gives every scraped series, which no exporter serves.
TARGET_LABELS = {"instance", "job"}


@pytest.fixture(scope="module")
def worker_env(settings, tmp_path_factory) -> dict[str, str]:
    """A worker on the idle app's broker (which no other worker reads) with every control that has a metric
    switched on: the pause, the breaker (4 calls, half of them failed, open for a minute), a rate limit on
    one model, and the sweeper every second from its own beat. One attempt per task: a failed call is a
    failed task, so the test decides when the calls fail."""
    return {
        **settings.as_env(),
        "REDIS_URL": IDLE_REDIS,
        "METRICS_PORT": str(free_port()),
        "METRICS_MULTIPROCESS_DIR": str(tmp_path_factory.mktemp("alerts-metrics")),
        "WORKER_CONCURRENCY": "16",
        "PAUSE_ENABLED": "true",
        "BREAKER_ENABLED": "true",
        "BREAKER_MIN_CALLS": "4",
        "BREAKER_FAILURE_RATIO": "0.5",
        "BREAKER_COOLDOWN_SECONDS": "60",
        "RATE_LIMITS_ENABLED": "true",
        "LLM_RATE_LIMITS": json.dumps({LIMITED_MODEL: {"rpm": 60}}),
        "SWEEP_INTERVAL_SECONDS": "1",
        "TASK_MAX_ATTEMPTS": "1",
    }


@pytest.fixture(scope="module")
def watched(worker_env, tmp_path_factory) -> Iterator[tuple[int, httpx.Client]]:
    """The worker's metrics port, and a Prometheus scraping it every second with the shipped rules, their
    `for:` durations cut to 0 so that the test needs no minutes (the expressions are the shipped ones)."""
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    folder = tmp_path_factory.mktemp("prometheus")
    rules = yaml.safe_load(ALERT_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (folder / "alerts.yml").write_text(yaml.safe_dump(rules))
    port = int(worker_env["METRICS_PORT"])
    beat = ("-B", "--schedule", str(folder / "beat-schedule"))
    with (
        celery_worker(env=worker_env, log_path=LOG_DIR / "alerts-worker.log", name="alerts", extra_args=beat),
        prometheus_server(folder, targets=[f"127.0.0.1:{port}"], rule_files=[folder / "alerts.yml"]) as api,
    ):
        yield port, api


@pytest.fixture(scope="module")
def outage(watched, worker_env, idle_app, session_factory, llm) -> Iterator[str]:
    """The worker has done what the rules and panels watch: tasks completed, a call waited for a rate-limit
    slot, a task was deferred by the pause, and then the LLM server failed a model's calls with 500 until its
    breaker opened: 2 calls, then (once Prometheus has scraped those) 4 more, as an outage goes on; a
    counter's first value is no increase to `rate()`. Yields that model's name."""

    def run(agent, *titles: str, timeout: float = 60) -> None:
        items = [{"title": title, "agent_id": str(agent.id), "user_id": "u1"} for title in titles]
        wait_for_final(session_factory, create_agent_tasks(items, app=idle_app), timeout=timeout)

    run(add_agent(session_factory), "observed 1", "observed 2", "observed 3")
    limited = add_agent(session_factory, model=LIMITED_MODEL)
    run(limited, "limited 1")
    run(limited, "limited 2")  # within a second of the first: it waits for its slot
    assert "paused since" in run_cli(worker_env, "pause").stdout
    [held] = create_agent_tasks(
        [{"title": "held", "agent_id": str(add_agent(session_factory).id), "user_id": "u1"}], app=idle_app
    )
    wait_until(lambda: _waiting_reason(session_factory, held) == "paused", what="task held by the pause")
    run_cli(worker_env, "resume")
    wait_for_final(session_factory, [held])
    failing = add_agent(session_factory, model="gpt-4.1-mini")
    rule = llm.add_fault(fault="500", model=failing.model)
    try:
        run(failing, "outage 1", "outage 2")
        wait_until(lambda: _scraped(watched[1], 'agent_service_llm_requests_total{status="500"} == 2'), what="2 500s")
        run(failing, *(f"outage {n}" for n in range(3, 7)))
        wait_until(lambda: _breaker_open(watched[0], failing.model), what="breaker open")
        yield failing.model
    finally:
        llm.remove_fault(rule)


def _waiting_reason(session_factory, task_id: str) -> str | None:
    with session_scope(session_factory) as session:
        task = session.get(Task, task_id)
        return task.waiting_reason if task and task.status != TaskStatus.COMPLETED else None


def _scraped(api: httpx.Client, query: str) -> bool:
    return bool(api.get("/api/v1/query", params={"query": query}).json()["data"]["result"])


def _breaker_open(port: int, model: str) -> bool:
    return any(
        name == "agent_service_breaker_open" and ("model", model) in labels and value == 1
        for (name, labels), value in scrape(port).items()
    )


def test_every_metric_and_label_a_rule_or_a_panel_names_is_served(watched, outage):
    # Given the worker's exporter after it did what the rules and panels watch
    port, _ = watched
    served: dict[str, set[str]] = {}
    for name, labels in scrape(port):
        served.setdefault(name, set()).update(label for label, _ in labels)
    # Then every name each expression selects is served, with every label it matches, groups by or prints
    missing = []
    for expression in shipped_expressions():
        named = selectors(expression.text)
        for name, matched in named.items():
            if name not in served:
                missing.append(f"{expression.where}: {name} is not served")
            elif unserved := matched - served[name]:
                missing.append(f"{expression.where}: {name} has no label {sorted(unserved)}")
        offered = set().union(*(served.get(name, set()) for name in named), TARGET_LABELS)
        if unserved := (grouping_labels(expression.text) | expression.printed_labels) - offered:
            missing.append(f"{expression.where}: no metric it names has {sorted(unserved)}")
    assert missing == []


def test_every_rule_and_panel_expression_parses_in_prometheus(watched):
    _, api = watched
    refused = {}
    for expression in shipped_expressions():
        answer = api.get("/api/v1/query", params={"query": expression.text}).json()
        if answer["status"] != "success":
            refused[expression.where] = answer.get("error")
    assert refused == {}


def test_an_llm_outage_fires_its_alert_in_prometheus(watched, outage):
    # Given the LLM server failing every call of one model with 500 (and its breaker open)
    _, api = watched

    def firing() -> dict[str, list[dict]]:
        alerts = api.get("/api/v1/alerts").json()["data"]["alerts"]
        found: dict[str, list[dict]] = {}
        for alert in alerts:
            if alert["state"] == "firing":
                found.setdefault(alert["labels"]["alertname"], []).append(alert)
        return found

    # Then Prometheus fires the 5xx alert for that model, and the breaker's, with their runbook links
    wait_until(
        lambda: {"AgentServiceLLMServerErrors", "AgentServiceBreakerOpen"} <= set(firing()), what="alerts firing"
    )
    alerts = firing()
    [server_errors] = alerts["AgentServiceLLMServerErrors"]
    assert server_errors["labels"]["model"] == outage
    assert server_errors["annotations"]["runbook_url"] == "docs/operations.md#agentservicellmservererrors"
    assert re.search(rf"calls to model {re.escape(outage)} ended in a 5xx", server_errors["annotations"]["description"])
    assert [alert["labels"]["model"] for alert in alerts["AgentServiceBreakerOpen"]] == [outage]
    # and none of those that watch what did not happen
    assert not {"AgentServiceNoWorker", "AgentServiceLLMAuthErrors", "AgentServiceDatabaseUnreachable"} & set(alerts)
