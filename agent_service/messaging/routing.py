"""What crosses the broker, by name: the queues, the task names and which queue each task goes to.

Both `worker.py` (which declares the queues and routes) and `tasks.py` (which names its tasks) read them
here. The task names keep the design's `worker.` prefix.
"""

from __future__ import annotations

from kombu.entity import Exchange, Queue

AGENT_QUEUE = "agent_tasks"
SYSTEM_QUEUE = "system"

PROCESS_TASK_NAME = "worker.process_agent_task"
HEALTH_TASK_NAME = "worker.health_check"
SWEEP_TASK_NAME = "worker.sweep_stale_tasks"

# Each queue with a direct exchange and routing key of its own name.
TASK_QUEUES = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (AGENT_QUEUE, SYSTEM_QUEUE)
)

TASK_ROUTES = {
    PROCESS_TASK_NAME: {"queue": AGENT_QUEUE},
    HEALTH_TASK_NAME: {"queue": SYSTEM_QUEUE},
    SWEEP_TASK_NAME: {"queue": SYSTEM_QUEUE},
}
