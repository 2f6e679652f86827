"""Following an api run with a real worker, the bundled LLM server scripting its turns and the bundled tool
server answering its calls: a follower who arrives mid-run sees the steps so far from the database, then the
rest live, the later turns token by token; one who arrives after the end sees the steps and the end."""

from __future__ import annotations

import pytest

from agent_service.live.events import EventKind, LiveEvent
from agent_service.models import TaskStatus
from agent_service.tasks import follow_agent_task
from tests.integration.api.conftest import calls, step_rows
from tests.support import run_cli, wait_for_final, wait_until

ANSWER = "Packed for Oslo: an umbrella, rain boots and a warm coat, since it will rain all week."


def steps_of(events: list[LiveEvent]) -> list[tuple[EventKind, int | None]]:
    """Each event but the tokens, by kind and step position."""
    return [(event.kind, event.data.get("position")) for event in events if event.kind is not EventKind.TOKEN]


@pytest.mark.usefixtures("api_worker")
def test_a_follower_joining_a_running_api_task_sees_its_steps_so_far_then_the_rest_token_by_token(
    api_app, submit, session_factory, tool_server
):
    # Given an api run nobody follows, whose first turn calls a tool that takes 3 s
    task_id, _ = submit([calls(("wait", {"ms": 3000})), calls(("weather", {"city": "Oslo"})), {"content": ANSWER}])
    wait_until(lambda: tool_server.count(path="/slow") == 1, what="the tool call under way", timeout=30)
    # When someone starts following it while the tool runs (its turn recorded and announced before it was sent)
    events = list(follow_agent_task(task_id, app=api_app, timeout=60))
    # Then they see the first turn (from the database), then every later step as it comes, then the end
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert (task.status, task.result) == (TaskStatus.COMPLETED, ANSWER)
    assert steps_of(events) == [
        (EventKind.STEP, 0),
        (EventKind.TOOL_RESULT, 1),
        (EventKind.STEP, 2),
        (EventKind.TOOL_CALL, 3),
        (EventKind.TOOL_RESULT, 3),
        (EventKind.STEP, 4),
        (EventKind.ENDED, None),
    ]
    assert events[0].data["tools"] == ["wait"]
    # And the last turn's text came token by token, before its step
    last_step = next(
        at for at, event in enumerate(events) if (event.kind, event.data.get("position")) == (EventKind.STEP, 4)
    )
    tokens = [event for event in events if event.kind is EventKind.TOKEN]
    assert tokens and all(events.index(token) < last_step for token in tokens)
    assert "".join(token.data["text"] for token in tokens) == ANSWER
    assert events[-1].data == {"status": "completed", "result": ANSWER}
    # And a follower arriving after the end sees the same steps in the same form, the tool sent first included
    again = list(follow_agent_task(task_id, app=api_app, timeout=10))
    live = [(event.kind, event.data) for event in events if event.kind is not EventKind.TOKEN]
    recorded = [(event.kind, event.data) for event in again]
    sent_first = (EventKind.TOOL_CALL, {"position": 1, "name": "wait", "arguments": {"ms": 3000}})
    assert recorded == [live[0], sent_first, *live[1:]]


@pytest.mark.usefixtures("api_worker")
def test_a_follower_of_a_finished_api_task_sees_its_steps_then_its_end(api_app, submit, session_factory):
    # Given an api run that ended with nobody following
    task_id, _ = submit([calls(("weather", {"city": "Oslo"})), {"content": "Sunny."}])
    assert wait_for_final(session_factory, [task_id])[task_id].status is TaskStatus.COMPLETED
    # When someone follows it
    events = list(follow_agent_task(task_id, app=api_app, timeout=10))
    # Then they see its steps as the events they made, then its end, at once
    assert steps_of(events) == [
        (EventKind.STEP, 0),
        (EventKind.TOOL_CALL, 1),
        (EventKind.TOOL_RESULT, 1),
        (EventKind.STEP, 2),
        (EventKind.ENDED, None),
    ]
    assert events[0].data["tools"] == ["weather"] and events[0].data["prompt_tokens"] > 0
    assert events[2].data["name"] == "weather" and events[2].data["status"] == "succeeded"
    assert events[3].data["text"] == "Sunny."
    assert events[-1].data == {"status": "completed", "result": "Sunny."}


@pytest.mark.usefixtures("api_worker")
def test_cli_follow_joining_a_running_api_task_prints_its_first_turn_then_the_rest(
    api_settings, submit, session_factory
):
    # Given an api run under way, its first turn recorded and its tool still running
    task_id, _ = submit([calls(("wait", {"ms": 3000})), {"content": ANSWER}])
    wait_until(lambda: step_rows(session_factory, task_id), what="the first turn recorded", timeout=30)
    # When someone runs `python cli.py follow`
    followed = run_cli(api_settings, "follow", task_id)
    # Then it prints the first turn, the tool's result, the answer as it came, its step, and the end
    assert followed.returncode == 0, followed.stderr
    out = followed.stdout
    printed = [out.find(text) for text in ('[step] {"position": 0', '[tool_result] {"position": 1', ANSWER)]
    printed.append(out.find('[step] {"position": 2'))
    assert printed[0] == 0 and printed == sorted(printed) and out.endswith("completed\n")
