"""The LLM process: real calls to the bundled LLM server from a real child process, its errors
classified on the way back, its death survived, and a worker process that never loads the LLM client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import wait
from dataclasses import replace

import psutil
import pytest

from agent_service.devtools.processes import ROOT, celery_worker, started, worker_env
from agent_service.errors import PermanentError, RetryableError
from agent_service.llm.client import run_request
from agent_service.llm.messages import LLMRequest, Message, ModelOptions
from agent_service.llm.runners import BackgroundEventLoop, ChildProcessRunner
from agent_service.llm.send_slots import SendSlot
from tests.support import make_settings, wait_until


@pytest.fixture
def runner(settings):
    runner = ChildProcessRunner(settings)
    yield runner
    runner.close()


def call(title: str) -> LLMRequest:
    return LLMRequest(
        model="gpt-4o-mini",
        temperature=0.0,
        max_tokens=50,
        options=ModelOptions(),
        messages=(Message("system", "You are terse."), Message("user", f"{title}: some description")),
    )


def test_calls_run_in_a_child_process_and_come_back_with_text_and_usage(runner, llm):
    title = f"child-{uuid.uuid4().hex[:8]}"
    futures = runner.submit([call(f"{title}-{i}") for i in range(3)])
    replies = [future.result(timeout=30) for future in futures]
    assert all(reply.text and reply.usage.total_tokens > 0 for reply in replies)
    assert len(llm.requests(title)) == 3
    assert runner._child._process.pid != os.getpid()


def test_calls_on_the_in_process_loop_use_the_real_client_too(settings, llm):
    title = f"in-process-{uuid.uuid4().hex[:8]}"
    # Settings of its own: a process shares one client per configuration, bound to the loop it first ran on.
    loop = BackgroundEventLoop(
        make_settings(openai_base_url=settings.openai_base_url, llm_timeout_seconds=4.5), run_request
    )
    try:
        [reply] = [future.result(timeout=30) for future in loop.submit([call(title)])]
    finally:
        loop.close()
    assert reply.text and reply.usage.total_tokens > 0 and len(llm.requests(title)) == 1


def test_llm_errors_arrive_classified_with_the_retry_after_the_server_asked_for(runner, llm):
    limited, refused = f"limited-{uuid.uuid4().hex[:8]}", f"refused-{uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="429", match=limited, times=1, retry_after=7)
    llm.add_fault(fault="401", match=refused, times=1)
    rate_limited, unauthorised = runner.submit([call(limited), call(refused)])
    with pytest.raises(RetryableError) as retryable:
        rate_limited.result(timeout=30)
    assert retryable.value.delay == 7 and "429" in str(retryable.value)
    with pytest.raises(PermanentError, match="401"):
        unauthorised.result(timeout=30)


def test_cancelling_a_call_aborts_its_http_request_and_leaves_the_other_calls_alone(runner, llm):
    # Given two slow calls under way in the LLM process
    slow, other = f"slow-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="slow", match=slow, delay_ms=4000)
    doomed, kept = runner.submit([call(slow), call(other)])
    wait_until(lambda: llm.requests(slow), what="slow call under way", timeout=20)
    # When the first is cancelled
    runner.cancel([doomed])
    # Then its future is cancelled at once (and a thread waiting on it wakes), the server sees the client go
    # away long before its answer was due, and the other call still ends with its reply
    assert doomed.cancelled() and wait([doomed], timeout=1).done == {doomed}
    wait_until(lambda: llm.requests(slow)[0]["ended"] == "dropped", what="aborted request", timeout=3)
    assert kept.result(timeout=30).text
    assert [entry["ended"] for entry in llm.requests(other)] == ["answered"]


def test_a_call_reserved_ahead_leaves_when_its_slot_comes_and_one_cancelled_meanwhile_never_leaves(runner, llm):
    # Given two calls whose rate-limit slot comes in a second and a half, sent to the LLM process now
    title = f"ahead-{uuid.uuid4().hex[:8]}"
    slot_at = time.time() + 1.5
    slot = SendSlot(
        leave_by=slot_at + 0.25, buckets=(), costs=(), burst_seconds=0.25, max_wait_seconds=1.0, not_before=slot_at
    )
    sent, doomed = runner.submit(
        [replace(call(f"{title}-sent"), send_slot=slot), replace(call(f"{title}-gone"), send_slot=slot)]
    )
    # When the second is cancelled while it waits
    time.sleep(0.5)
    runner.cancel([doomed])
    # Then the first reaches the provider when its slot comes, not before, and the second never does
    assert sent.result(timeout=30).text
    [request] = llm.requests(f"{title}-sent")
    assert request["at"] >= slot_at - 0.05
    assert llm.requests(f"{title}-gone") == []


def test_cancelling_a_call_on_the_in_process_loop_aborts_its_http_request(settings, llm):
    slow = f"slow-{uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="slow", match=slow, delay_ms=4000)
    loop = BackgroundEventLoop(
        make_settings(openai_base_url=settings.openai_base_url, llm_timeout_seconds=4.6), run_request
    )
    try:
        [doomed] = loop.submit([call(slow)])
        wait_until(lambda: llm.requests(slow), what="slow call under way", timeout=20)
        loop.cancel([doomed])
        assert wait([doomed], timeout=1).done == {doomed}
        wait_until(lambda: llm.requests(slow)[0]["ended"] == "dropped", what="aborted request", timeout=3)
    finally:
        loop.close()
    assert doomed.cancelled()


def test_calls_of_a_child_that_dies_fail_as_retryable_and_the_next_call_gets_a_new_child(runner, llm):
    title = f"hang-{uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="hang", match=title, times=1)
    [hanging] = runner.submit([call(title)])
    first_child = runner._child._process
    wait_until(lambda: llm.requests(title), what="call under way in the child", timeout=20)
    first_child.send_signal(signal.SIGKILL)
    with pytest.raises(RetryableError, match="LLM process exited"):
        hanging.result(timeout=30)
    [after] = runner.submit([call(f"after-{uuid.uuid4().hex[:8]}")])
    assert after.result(timeout=30).text
    assert runner._child._process.pid != first_child.pid


def test_closing_the_runner_lets_the_calls_under_way_end_with_their_replies(runner, llm, capfd):
    # Given calls under way in the child (as when a worker stops mid-batch)
    title = f"closing-{uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="slow", match=title, delay_ms=1500)
    futures = runner.submit([call(f"{title}-{i}") for i in range(3)])
    wait_until(lambda: len(llm.requests(title)) == 3, what="calls under way in the child", timeout=20)
    child = runner._child._process
    # When the runner is closed
    runner.close()
    # Then every call got its reply (none is made again elsewhere), and the child exited without a traceback
    assert all(future.result(timeout=0).text for future in futures)
    assert child.returncode == 0 and len(llm.requests(title)) == 3
    assert "Traceback" not in capfd.readouterr().err


def test_the_llm_process_leaves_stop_signals_to_its_worker(runner, llm, capfd):
    # Given a call under way in the child
    title = f"signalled-{uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="slow", match=title, delay_ms=1000)
    [future] = runner.submit([call(title)])
    wait_until(lambda: llm.requests(title), what="call under way in the child", timeout=20)
    child = runner._child._process
    # When the signals of Ctrl-C, Ctrl-\ or a process-group stop reach it too
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        child.send_signal(stop_signal)
    # Then the call still ends with its reply, and the child keeps serving until its worker closes it
    assert future.result(timeout=20).text
    assert child.poll() is None
    assert "Traceback" not in capfd.readouterr().err


def test_child_exits_when_its_worker_process_is_killed(settings, llm):
    # A worker process that starts an LLM child, prints the child's pid, then waits to be killed.
    script = (
        "import sys, time, uuid\n"
        "from agent_service.llm.runners import ChildProcessRunner\n"
        "from tests.support import make_settings\n"
        "from tests.integration.test_llm_runners import call\n"
        f"runner = ChildProcessRunner(make_settings(openai_base_url={settings.openai_base_url!r}))\n"
        "runner.submit([call('t')])[0].result(timeout=30)\n"
        "print(runner._child._process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child_pid = int(worker.stdout.readline())
    worker.kill()
    worker.wait()
    wait_until(lambda: not _running(child_pid), what="exit of the orphaned LLM process", timeout=10)


def test_the_worker_process_never_loads_the_llm_client_and_the_llm_process_no_database_code():
    # The point of the split: each process carries only its own stack (tens of MB each).
    probe = (
        "import sys, {modules}; heavy = ('openai', 'langchain_core', 'sqlalchemy', 'celery', 'kombu'); "
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    env = {"PATH": os.environ["PATH"], **make_settings().as_env()}
    loaded = {
        side: subprocess.run(
            [sys.executable, "-c", probe.format(modules=modules)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for side, modules in (("worker", "worker, tasks"), ("llm process", "agent_service.llm.process"))
    }
    assert loaded == {"worker": "['celery', 'kombu', 'sqlalchemy']", "llm process": "['langchain_core', 'openai']"}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_each_prefork_pool_process_gets_one_llm_process_and_another_apps_worker_none(settings, tmp_path):
    env = settings.as_env()
    # Given our worker under prefork with 2 pool processes: each starts its LLM process when it is forked
    with celery_worker(
        env=env,
        log_path=tmp_path / "ours.log",
        name="llm-process",
        pool="prefork",
        concurrency=2,
        queues="llm-process-test",
    ) as ours:
        wait_until(lambda: len(_llm_processes_under(ours.pid)) == 2, what="LLM process per pool process", timeout=20)
    # And a worker of another app that imports ours for its configuration (the bench's floor) starts none
    floor = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.floor",
        "worker",
        "--loglevel=INFO",
        "-Q",
        "llm-process-test",
        "-n",
        "floor@%h",
    ]
    with started(floor, env=worker_env(env, pool="prefork", concurrency=2), log_path=tmp_path / "floor.log") as other:
        time.sleep(2)  # as long as ours took to start them
        assert _llm_processes_under(other.pid) == []


def _llm_processes_under(pid: int) -> list[psutil.Process]:
    return [
        process
        for process in psutil.Process(pid).children(recursive=True)
        if process.cmdline()[1:3] == ["-m", "agent_service.llm.process"]
    ]
