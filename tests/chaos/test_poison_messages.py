"""Scenario 7: poison messages published straight into the worker's queue, on either broker. Each is rejected
and logged, never executed; the worker stays up and keeps serving. (A message that is handed back again and
again instead: test_dead_letters.)"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

from agent_service.messaging.routing import AGENT_QUEUE, HEALTH_TASK_NAME, PROCESS_TASK_NAME
from agent_service.models import TaskStatus
from tests.chaos.harness import BROKERS_IN_FULL
from tests.support import wait_until

HUGE = 5 * 1024 * 1024


class TouchOnUnpickle:
    """A pickle payload whose mere loading creates `path`: proof that pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def publish_raw(
    app, body: bytes, *, content_type: str, content_encoding: str = "utf-8", task: str = PROCESS_TASK_NAME
) -> str:
    """Publish a hand-made protocol-2 message: the headers Celery sends, a body of our choosing."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "(poison)",
        "kwargsrepr": "{}",
        "origin": "chaos",
        "ignore_result": True,
    }
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=AGENT_QUEUE,
            routing_key=AGENT_QUEUE,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            correlation_id=task_id,
        )
    return task_id


def poison(app, marker: Path) -> dict[str, tuple[str, str]]:
    """Every kind of bad message, by name -> (its message id, other text its rejection is logged with)."""
    stray = str(uuid.uuid4())

    def send(name: str, evidence: str, **options) -> tuple[str, str]:
        return app.send_task(name, ignore_result=True, queue=AGENT_QUEUE, **options).id, evidence

    return {
        "malformed JSON": (publish_raw(app, b'[["6f1c", {"broken"', content_type="application/json"), "decode"),
        "pickle": (
            publish_raw(
                app,
                pickle.dumps(([TouchOnUnpickle(marker)], {}, {})),
                content_encoding="binary",
                content_type="application/x-python-serialize",
            ),
            "pickle",
        ),
        "unknown task": send("worker.no_such_task", "no_such_task", args=[stray]),
        "int argument": send(PROCESS_TASK_NAME, "got 123", args=[123]),
        "no argument": send(PROCESS_TASK_NAME, "got []", args=[]),
        "not a uuid": send(PROCESS_TASK_NAME, "not-a-uuid", args=["not-a-uuid"]),
        "extra kwargs": send(PROCESS_TASK_NAME, stray, args=[stray], kwargs={"priority": "high"}),
        "5 MB argument": send(PROCESS_TASK_NAME, "got 'xxxxxxxx", args=["x" * HUGE]),
    }


@BROKERS_IN_FULL
def test_poison_messages_are_rejected_unexecuted_and_the_worker_keeps_serving(scenario, broker, tmp_path):
    # Given a running worker
    run = scenario("7 poison messages")
    worker = run.start_worker("target")
    marker = tmp_path / "pickle-was-executed"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(TouchOnUnpickle(control)))
    assert control.exists()  # the payload is live: loading it runs `touch`
    # When every kind of poison message lands in its queue
    ids = poison(run.app, marker)

    # Then each is logged as rejected, and the queue drains: none is redelivered forever
    def unlogged() -> list[str]:
        log = run.worker_log()
        return [name for name, (message_id, evidence) in ids.items() if message_id not in log and evidence not in log]

    wait_until(lambda: unlogged() == [], what=f"log of the rejection of {unlogged()}")
    wait_until(lambda: broker.messages(AGENT_QUEUE) == 0, what="drained queue")
    # And nothing was executed
    assert not marker.exists()
    log = run.worker_log()
    assert len(log) < HUGE  # the huge body is not copied into the log
    # And the worker still serves: a normal task completes and the health check answers
    [row] = run.wait(run.submit(1), timeout=30).values()
    assert row.status == TaskStatus.COMPLETED and worker.poll() is None
    assert run.app.send_task(HEALTH_TASK_NAME).get(timeout=30)["status"] == "ok"
    tally = run.tally(name=f"{run.name} ({len(ids)}) + 1 good")
    assert (tally.completed, tally.lost, tally.duplicates) == (1, 0, 0)
