"""The backlog gauges are read on each scrape, and a source that is down costs only its own gauge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from agent_service.monitoring import BacklogCollector


def scrape(collector: BacklogCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def broker_down() -> dict[str, int]:
    raise ConnectionError("broker unreachable")


def test_gauges_show_queue_lengths_and_the_oldest_wait():
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    text = scrape(BacklogCollector(lambda: {"agent_tasks": 7, "system": 0}, lambda: an_hour_ago))
    assert 'agent_service_queue_length{queue="agent_tasks"} 7.0' in text
    assert 'agent_service_queue_length{queue="system"} 0.0' in text
    [age] = [float(line.split()[1]) for line in text.splitlines() if line.startswith("agent_service_oldest")]
    assert 3600 <= age < 3660


def test_an_unreachable_broker_leaves_out_only_the_queue_lengths():
    text = scrape(BacklogCollector(broker_down, lambda: None))
    assert "agent_service_queue_length{" not in text
    assert "agent_service_oldest_queued_task_age_seconds 0.0" in text
