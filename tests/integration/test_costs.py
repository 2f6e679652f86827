"""Usage and cost on real PostgreSQL and the bundled LLM server over HTTP: every paid attempt is in the
books (a reply its kind refused and a filtered one too), the task sums them, cached tokens are priced as
cached, an unknown model is reported rather than free, model-caused errors fail clearly (or are cut to fit
once), and `python cli.py stats` sums it all."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select

from agent_service.config import ModelPriceOverride
from agent_service.database import session_scope
from agent_service.errors import RetryableError
from agent_service.execution.context import RunContext
from agent_service.execution.outcomes import Outcome
from agent_service.execution.pipeline import execute_agent_task, execute_agent_tasks
from agent_service.kinds.base import KindResult, TaskWork
from agent_service.kinds.text import TextKind
from agent_service.llm.messages import LLMReply
from agent_service.llm.prices import PriceBook
from agent_service.models import Agent, Task, TaskAttempt, TaskStatus
from agent_service.terminal.records import STATS_FIELDS
from tests.support import LLMControl, run_cli

# gpt-4o-mini in genai-prices: $0.15 input, $0.075 cached input, $0.60 output per million tokens.
INPUT, CACHED, OUTPUT = 0.15e-6, 0.075e-6, 0.60e-6


class RefusesFirstReply(TextKind):
    """A kind that cannot use the first reply it is given (as a structured kind with invalid JSON)."""

    def __init__(self) -> None:
        self.replies = 0

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        self.replies += 1
        if self.replies == 1:
            raise RetryableError("reply was not valid for this kind")
        return super().interpret(work, reply)


@pytest.fixture(autouse=True)
def clean_server(llm: LLMControl) -> None:
    llm.http.post("/control/reset")


def make_agent(session_factory, *, model: str = "gpt-4o-mini", prompt: str | None = None, **settings) -> Agent:
    with session_scope(session_factory) as session:
        agent = Agent(
            name=f"cost-{uuid.uuid4().hex[:8]}",
            prompt=prompt or f"You are agent {uuid.uuid4().hex} and you are careful.",
            model=model,
            temperature=0.0,
            max_tokens=50,
            settings=settings,
        )
        session.add(agent)
    return agent


def make_task(session_factory, agent: Agent, description: str = "Summarise the quarterly report.") -> uuid.UUID:
    with session_scope(session_factory) as session:
        task = Task(title="Cost test", description=description, agent_id=agent.id, user_id="u-cost")
        session.add(task)
        session.flush()
        return task.id


def load(session_factory, task_id: uuid.UUID) -> tuple[Task, list[TaskAttempt]]:
    with session_scope(session_factory) as session:
        task = session.get(Task, task_id)
        attempts = list(session.scalars(select(TaskAttempt).where(TaskAttempt.task_id == task_id)))
        session.expunge_all()
    return task, attempts


def price(prompt: int, completion: int, cached: int = 0) -> float:
    return (prompt - cached) * INPUT + cached * CACHED + completion * OUTPUT


def test_a_paid_reply_its_kind_refused_is_charged_and_the_task_sums_both_attempts(settings, session_factory, runner):
    # Given a kind that refuses the first reply it gets
    agent, kinds = make_agent(session_factory), {"text": RefusesFirstReply()}
    task_id = make_task(session_factory, agent)
    # When the task runs twice: the refused reply, then a good one
    first = execute_agent_tasks(
        [task_id], RunContext(session_factory=session_factory, settings=settings, llm=runner, kinds=kinds)
    )[0]
    second = execute_agent_tasks(
        [task_id], RunContext(session_factory=session_factory, settings=settings, llm=runner, kinds=kinds)
    )[0]
    # Then the retried attempt is in the books with its tokens and cost, and the task sums both
    assert (first.status, second.status) == (Outcome.RETRYING, Outcome.COMPLETED)
    task, attempts = load(session_factory, task_id)
    [retried] = attempts
    assert retried.outcome == "retried" and retried.model == "gpt-4o-mini" and retried.prompt_tokens > 0
    assert retried.cost_usd == pytest.approx(price(retried.prompt_tokens, retried.completion_tokens))
    # The second call sends the same system prompt: the server reports it cached, priced at the cached rate.
    second_prompt, second_completion = (
        task.prompt_tokens - retried.prompt_tokens,
        task.completion_tokens - retried.completion_tokens,
    )
    assert retried.cached_tokens == 0 and task.cached_tokens == len(agent.prompt.split())
    assert task.cost_usd == pytest.approx(
        retried.cost_usd + price(second_prompt, second_completion, cached=task.cached_tokens)
    )
    assert task.unpriced_calls == 0


def test_an_unknown_model_is_recorded_without_a_cost_and_counted_not_free(settings, session_factory, runner):
    agent = make_agent(session_factory, model="my-self-hosted-model")
    task_id = make_task(session_factory, agent)
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    task, _ = load(session_factory, task_id)
    assert outcome.status is Outcome.COMPLETED and task.prompt_tokens > 0
    assert task.cost_usd is None and task.unpriced_calls == 1


def test_model_prices_setting_prices_a_self_hosted_model(settings, session_factory, runner):
    prices = {"my-self-hosted-model": ModelPriceOverride(input_per_mtok=1.0, output_per_mtok=2.0)}
    priced = settings.model_copy(update={"model_prices": prices})
    agent = make_agent(session_factory, model="my-self-hosted-model")
    task_id = make_task(session_factory, agent)
    execute_agent_task(
        task_id, RunContext(session_factory=session_factory, settings=priced, llm=runner, prices=PriceBook(priced))
    )
    task, _ = load(session_factory, task_id)
    assert task.cost_usd == pytest.approx((task.prompt_tokens * 1.0 + task.completion_tokens * 2.0) / 1e6)


def test_a_filtered_reply_fails_clearly_and_is_charged(settings, session_factory, runner, llm: LLMControl):
    agent = make_agent(session_factory)
    task_id = make_task(session_factory, agent, description="[[mock:filtered]] something the filter stops")
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    task, [failed] = load(session_factory, task_id)
    assert outcome.status is Outcome.FAILED and task.status is TaskStatus.FAILED
    assert "content filter" in task.error and failed.prompt_tokens == task.prompt_tokens > 0
    assert task.cost_usd == pytest.approx(failed.cost_usd) and task.cost_usd > 0
    assert len(llm.requests("something the filter stops")) == 1  # not retried


def test_a_prompt_the_content_filter_refuses_fails_at_once(settings, session_factory, runner, llm: LLMControl):
    agent = make_agent(session_factory)
    task_id = make_task(session_factory, agent, description="[[mock:content_filter]] refused prompt")
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    task, _ = load(session_factory, task_id)
    assert outcome.status is Outcome.FAILED and "content filter refused the task" in task.error
    assert task.attempts == 1 and len(llm.requests("refused prompt")) == 1


def test_a_task_too_long_for_the_context_fails_naming_the_model(settings, session_factory, runner, llm: LLMControl):
    llm.http.post("/control/config", json={"context_window": 120})
    agent = make_agent(session_factory)
    task_id = make_task(session_factory, agent, description="word " * 200)
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    task, _ = load(session_factory, task_id)
    assert outcome.status is Outcome.FAILED and task.attempts == 1
    assert task.error.startswith("the task is too long for gpt-4o-mini's context")
    assert task.prompt_tokens is None  # a refused request costs nothing


def test_an_agent_that_allows_it_has_a_too_long_description_cut_to_fit_once(
    settings, session_factory, runner, llm: LLMControl
):
    llm.http.post("/control/config", json={"context_window": 120})
    agent = make_agent(session_factory, truncate_to_fit=True)
    task_id = make_task(session_factory, agent, description="fit-marker " + "word " * 200)
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    task, _ = load(session_factory, task_id)
    sent = llm.requests("fit-marker")
    assert outcome.status is Outcome.COMPLETED and task.attempts == 1
    assert [entry["status"] for entry in sent] == [400, 200]
    assert task.prompt_tokens + 50 <= 120


def test_stats_prints_tasks_success_durations_tokens_and_cost_per_group(settings, session_factory, runner):
    agent = make_agent(session_factory)
    user = f"us-{uuid.uuid4().hex[:6]}"  # short: the table folds a long name
    ids = [make_task(session_factory, agent) for _ in range(3)]
    with session_scope(session_factory) as session:
        for task_id in ids:
            session.get(Task, task_id).user_id = user
    for task_id in ids:
        execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    with session_scope(session_factory) as session:
        tasks = [session.get(Task, task_id) for task_id in ids]
        cost = sum(task.cost_usd for task in tasks)
        tokens = sum(task.prompt_tokens for task in tasks)
    result = run_cli(settings.model_copy(update={"log_json": True}), "stats", "--by", "user", "--since", "1h")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if user in line)
    cells = dict(zip(STATS_FIELDS, row.split("\t"), strict=True))  # piped: tab-separated, every figure whole
    assert (cells["tasks"], cells["success_rate"], cells["prompt_tokens"]) == ("3", "1.0", str(tokens))
    assert float(cells["cost_usd"]) == pytest.approx(cost, abs=1e-6)
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(user in line["message"] and "tasks: 3" in line["message"] for line in logged)


def test_a_reply_that_is_not_the_json_asked_for_is_re_asked_once_and_both_calls_are_charged(
    settings, session_factory, runner, llm: LLMControl
):
    # Given an agent that asks for JSON, and a model whose first reply to this task is not JSON
    agent = make_agent(session_factory, response_format="json_object")
    task_id = make_task(session_factory, agent, description="reask-marker: list the risks")
    llm.add_fault(fault="invalid_json", match="reask-marker", times=1)
    # When the task runs once
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    # Then the model was asked again, within the same attempt, with its reply and why it could not be used
    task, _ = load(session_factory, task_id)
    sent = llm.requests("reask-marker")
    assert outcome.status is Outcome.COMPLETED and task.attempts == 1 and len(sent) == 2
    assert "cannot be used: the reply is not valid JSON" in sent[1]["text"]
    assert isinstance(json.loads(task.result), dict)
    # And the books hold both calls
    assert task.prompt_tokens > 0 and task.cost_usd == pytest.approx(
        price(task.prompt_tokens, task.completion_tokens, task.cached_tokens), abs=1e-9
    )
    # (a task of the same length asked once: the re-asked one paid its prompt twice, and more)
    control = make_task(session_factory, agent, description="plain-marker: list the risks")
    execute_agent_task(control, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    assert task.prompt_tokens > 2 * load(session_factory, control)[0].prompt_tokens


def test_a_second_reply_that_is_still_not_json_fails_the_task_with_the_reason_and_both_calls_charged(
    settings, session_factory, runner, llm: LLMControl
):
    agent = make_agent(session_factory, response_format="json_object")
    task_id = make_task(session_factory, agent, description="reask-twice-marker: list the risks")
    llm.add_fault(fault="invalid_json", match="reask-twice-marker", times=2)
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    task, attempts = load(session_factory, task_id)
    assert outcome.status is Outcome.FAILED and len(llm.requests("reask-twice-marker")) == 2
    assert task.error.startswith("the reply is not valid JSON")
    [failed] = attempts
    assert failed.prompt_tokens == task.prompt_tokens and task.cost_usd is not None and task.cost_usd > 0
