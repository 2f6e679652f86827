"""The original design document's worker, as written: what `make bench` measures the service against.

Prefork, concurrency 4; per task a NEW ChatOpenAI client and chain, and one SQLAlchemy session held
open through the LLM call (load the task, set running, commit, call the LLM, set the result, commit).
It consumes the service's queue, task name and message format (`args=[task_id]`) and writes the same
`tasks` rows. Run from the repository root:
`celery -A bench.baseline worker --pool=prefork --concurrency=4 -Q agent_tasks,system`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Celery
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from agent_service.config import get_settings
from agent_service.models import Task, TaskStatus

settings = get_settings()
celery_app = Celery("agentic_worker", broker=settings.broker_url, backend=settings.result_backend)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    timezone="UTC",
    enable_utc=True,
    task_track_started=True,
    task_time_limit=30 * 60,
    task_soft_time_limit=25 * 60,
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=1000,
    task_routes={"worker.process_agent_task": {"queue": "agent_tasks"}, "worker.health_check": {"queue": "system"}},
)
SessionLocal = sessionmaker(bind=create_engine(settings.database_url))


@celery_app.task(bind=True, name="worker.process_agent_task")
def process_agent_task(self, task_id: str) -> dict:
    """Process a task using an AI agent."""
    db = SessionLocal()
    try:
        task = db.query(Task).filter(Task.id == task_id).first()
        agent = task.agent
        task.status, task.started_at, task.attempts = TaskStatus.RUNNING, _now(), task.attempts + 1
        db.commit()
        llm = ChatOpenAI(
            model=agent.model,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            timeout=settings.llm_timeout_seconds,
            max_retries=0,
        )
        prompt = ChatPromptTemplate.from_messages(
            [("system", "{agent_prompt}"), ("human", "Task: {task_title}\n\nDescription: {task_description}")]
        )
        chain = prompt | llm | StrOutputParser()
        usage = UsageMetadataCallbackHandler()
        result = chain.invoke(
            {"agent_prompt": agent.prompt, "task_title": task.title, "task_description": task.description},
            config={"callbacks": [usage]},
        )
        tokens = next(iter(usage.usage_metadata.values()), {})
        task.status, task.result, task.finished_at = TaskStatus.COMPLETED, result, _now()
        task.prompt_tokens, task.completion_tokens = tokens.get("input_tokens"), tokens.get("output_tokens")
        task.total_tokens = tokens.get("total_tokens")
        db.commit()
        return {"status": "completed", "result": result}
    except Exception as e:
        db.rollback()
        db.query(Task).filter(Task.id == task_id).update(
            {"status": TaskStatus.FAILED, "error": str(e), "finished_at": _now()}
        )
        db.commit()
        return {"status": "error", "message": str(e)}
    finally:
        db.close()


def _now() -> datetime:
    return datetime.now(UTC)
