"""The design's Celery entry point, `celery -A worker worker|beat|flower`, run from the checkout: it hands on the
app and the agent task's handle built in `agent_service.worker` (`from worker import process_agent_task`)."""

from agent_service.worker import app, celery_app, create_celery_app, process_agent_task

__all__ = ["app", "celery_app", "create_celery_app", "process_agent_task"]
