"""The gauges read on each scrape (backlog, dead letters, pause, breakers, dependencies), and a service
that is down costs only its own gauges, shown as down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from agent_service.monitoring import Backlog, Readings, ReadingsCollector, SharedState


def scrape(readings: Readings) -> str:
    registry = CollectorRegistry()
    registry.register(ReadingsCollector(readings))
    return generate_latest(registry).decode()


def broker_down() -> dict[str, int]:
    raise ConnectionError("broker unreachable")


def redis_down() -> SharedState:
    raise ConnectionError("Redis unreachable")


def test_gauges_show_queue_lengths_the_oldest_wait_and_the_dead_letters():
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    text = scrape(Readings(lambda: {"agent_tasks": 7, "system": 0}, lambda: Backlog(an_hour_ago, 3)))
    assert 'agent_service_queue_length{queue="agent_tasks"} 7.0' in text
    assert 'agent_service_queue_length{queue="system"} 0.0' in text
    [age] = [float(line.split()[1]) for line in text.splitlines() if line.startswith("agent_service_oldest")]
    assert 3600 <= age < 3660
    assert "agent_service_dead_letters 3.0" in text
    assert 'agent_service_dependency_up{dependency="database"} 1.0' in text


def test_an_unreachable_broker_leaves_out_only_the_queue_lengths_and_shows_it_down():
    text = scrape(Readings(broker_down, lambda: Backlog(None, 0)))
    assert "agent_service_queue_length{" not in text
    assert "agent_service_oldest_queued_task_age_seconds 0.0" in text
    assert 'agent_service_dependency_up{dependency="broker"} 0.0' in text
    assert 'agent_service_dependency_up{dependency="database"} 1.0' in text
    assert 'dependency="redis"' not in text  # no REDIS_URL, no Redis to read


def test_pause_and_breakers_come_from_the_shared_state():
    state = SharedState(paused=True, breakers={("127.0.0.1:8099", "gpt-4o-mini"): True, ("x", "gpt-4o"): False})
    text = scrape(Readings(lambda: {}, lambda: Backlog(None, 0), lambda: state))
    assert "agent_service_paused 1.0" in text
    assert 'agent_service_breaker_open{model="gpt-4o-mini",provider="127.0.0.1:8099"} 1.0' in text
    assert 'agent_service_breaker_open{model="gpt-4o",provider="x"} 0.0' in text
    assert 'agent_service_dependency_up{dependency="redis"} 1.0' in text


def test_an_unreachable_redis_shows_down_and_leaves_out_its_gauges():
    text = scrape(Readings(lambda: {}, lambda: Backlog(None, 0), redis_down))
    assert 'agent_service_dependency_up{dependency="redis"} 0.0' in text
    assert "agent_service_paused" not in text
