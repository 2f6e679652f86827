"""Flower as an operator sees it: a real browser (Debian's `chromium`, driven through its `chromedriver` by
Selenium) logs in to `python cli.py flower` with the basic-auth login, finds the agent tasks a real worker ran
on the Tasks page with their states, opens one task's page (arguments, result, runtime), and without the login
is refused. The screenshots go to the test's tmp dir; with FLOWER_SCREENSHOTS=DIR (`make flower-screenshot`)
the Tasks page's is also saved as DIR/flower-tasks.png, the one docs/operations.md shows."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from agent_service.devtools.processes import started
from agent_service.messaging.routing import HEALTH_TASK_NAME
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import LOG_DIR
from tests.integration.test_worker import unique
from tests.support import add_agent, free_port, wait_for_final, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("worker")]

LOGIN = ("operator", "flower-browser-s3cret")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"  # given to Selenium, so that Selenium Manager downloads no driver
# Headless, and nothing beyond loopback: no sync, updates, field trials or QUIC probes (the network is closed,
# and a test sends traffic only to loopback). A profile of its own each time: no login remembered from before.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,720",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Chromium as a person would use it, with its network log kept so that a test can read the HTTP status of
    each page it loaded."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(LOG_DIR / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def flower(app, settings) -> Iterator[str]:
    """`python cli.py flower` with a login, on the session worker's broker; its base URL, once Flower has
    switched the worker's task events on (it does so every few seconds) and sees its tasks: health checks are
    sent until one shows. Events go off again after it."""
    port = free_port()
    guarded = settings.model_copy(update={"flower_port": port, "flower_basic_auth": ":".join(LOGIN)})
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "cli.py", "flower"]
    log = LOG_DIR / "flower-browser.log"
    try:
        with started(command, env=guarded.as_env(), log_path=log, ready_marker="Visit me at"):
            _await_task_events(app, base)
            yield base
    finally:
        app.control.disable_events()


def _await_task_events(app, base: str, *, timeout: float = 30) -> None:
    """Returns once Flower lists a health check: the worker's task events are on."""
    deadline = time.monotonic() + timeout
    while not _api(base, f"/api/tasks?taskname={HEALTH_TASK_NAME}"):
        assert time.monotonic() < deadline, f"Flower saw no task after {timeout}s"
        app.send_task(HEALTH_TASK_NAME)
        time.sleep(1)  # one health check a second: each is a database query on the worker


def _ended_in_flower(base: str) -> set[str]:
    return {task_id for state in ("SUCCESS", "FAILURE") for task_id in _api(base, f"/api/tasks?state={state}")}


def _api(base: str, path: str) -> dict:
    return httpx.get(base + path, auth=LOGIN, timeout=10).json()


def page_statuses(browser: webdriver.Chrome, url: str) -> list[int]:
    """The HTTP statuses the browser received for `url` (as it was asked for: with its login, if any) since the
    network log was last read."""
    messages = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    return [
        message["params"]["response"]["status"]
        for message in messages
        if message["method"] == "Network.responseReceived" and message["params"]["response"]["url"] == url
    ]


def test_an_operator_logs_in_sees_the_agent_tasks_with_their_states_and_opens_one(
    browser, flower, app, llm, session_factory, tmp_path
):
    # Given agent tasks a real worker ran while Flower watched: two completed, one refused by the provider
    agent = add_agent(session_factory, prefix="flower")
    marker = unique("flower")
    llm.add_fault(fault="401", match=f"{marker} refused")
    titles = [f"{marker} summary", f"{marker} translation", f"{marker} refused"]
    items = [{"title": title, "agent_id": str(agent.id), "user_id": "u-flower"} for title in titles]
    task_ids = create_agent_tasks(items, app=app)
    done, other, refused = task_ids
    wait_for_final(session_factory, task_ids)
    wait_until(lambda: set(task_ids) <= _ended_in_flower(flower), what="tasks ended in Flower", timeout=30)

    # When the operator opens Flower without the login, Then it refuses: a 401 and no Flower page
    browser.get(f"{flower}/tasks")
    assert set(page_statuses(browser, f"{flower}/tasks")) == {401}  # (once, or again as the browser asks again)
    assert browser.find_elements(By.ID, "tasks-table") == []

    # When they log in with the basic-auth credentials and open the Tasks page
    tasks_page = flower.replace("http://", f"http://{LOGIN[0]}:{LOGIN[1]}@") + "/tasks"
    browser.get(tasks_page)
    assert set(page_statuses(browser, tasks_page)) == {200}
    # Then each agent task is listed with its state
    states = WebDriverWait(browser, 30).until(lambda b: _rows_with(b, task_ids))
    assert "SUCCESS" in states[done] and "SUCCESS" in states[other]
    assert "FAILURE" in states[refused]
    assert all("worker.process_agent_task" in row for row in states.values())

    # When they open one task's page (the login is remembered, as a browser does)
    browser.find_element(By.CSS_SELECTOR, f"a[href$='/task/{done}']").click()
    WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith(f"/task/{done}"))
    details = _details(browser)
    _screenshot(browser, tmp_path / "flower-task.png")
    # Then it shows the task's arguments (its id), its result (the worker's outcome) and its runtime
    assert details["UUID"].splitlines()[0] == done
    assert details["Status"] == "SUCCESS"
    assert done in details["Arguments"]
    assert details["Result"].startswith(f"{{'status': 'completed', 'task_id': '{done}'")
    assert details["Runtime"]  # a duration, as Flower writes it ("0.12 sec")
    assert details["Name"] == "worker.process_agent_task"

    # And back on the Tasks page, what the operator saw is kept (docs/images/flower-tasks.png comes from here)
    browser.back()
    WebDriverWait(browser, 30).until(lambda b: _rows_with(b, task_ids))
    _screenshot(browser, tmp_path / "flower-tasks.png", keep_as="flower-tasks.png")


def _rows_with(browser: webdriver.Chrome, task_ids: list[str]) -> dict[str, str] | None:
    """The rows of `task_ids` in the Tasks table (each row's text) by task id, once it lists every one."""
    rows = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr"):
        links = row.find_elements(By.CSS_SELECTOR, "a[href*='/task/']")
        if links:
            rows[links[0].get_attribute("href").rsplit("/", 1)[-1]] = row.text
    return {task_id: rows[task_id] for task_id in task_ids} if set(task_ids) <= set(rows) else None


def _details(browser: webdriver.Chrome) -> dict[str, str]:
    """A task page's fields: each term of its detail list with its value's text."""
    details = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#task-page .detail-row"):
        term = row.find_element(By.TAG_NAME, "dt").text
        details[term] = row.find_element(By.TAG_NAME, "dd").text.strip()
    return details


def _screenshot(browser: webdriver.Chrome, path: Path, *, keep_as: str | None = None) -> None:
    """Saves what the browser shows to `path`, and to FLOWER_SCREENSHOTS/`keep_as` when that is set, in 64 colours
    (a third of the size, for the repository)."""
    assert browser.save_screenshot(str(path))
    folder = os.environ.get("FLOWER_SCREENSHOTS")
    if folder and keep_as:
        Image.open(path).convert("RGB").quantize(colors=64).save(Path(folder) / keep_as, optimize=True)
