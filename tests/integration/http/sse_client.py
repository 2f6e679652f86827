"""A client of `GET /v1/tasks/{id}/events` in a process of its own, as another application would be:
`python -m tests.integration.http.sse_client URL KEY TASK_ID [LAST_EVENT_ID]` prints each event as one JSON line
(`id`, `event`, `data`, and `at`: when it was read, in epoch seconds) as soon as it has read it."""

from __future__ import annotations

import json
import sys
import time

import httpx


def main(url: str, key: str, task_id: str, last_event_id: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    event: dict[str, str] = {}
    with httpx.stream("GET", f"{url}/v1/tasks/{task_id}/events", headers=headers, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                event[name] = value
                continue
            if "event" in event:
                record = {"id": event["id"], "event": event["event"], "data": json.loads(event["data"])}
                print(json.dumps({**record, "at": time.time()}), flush=True)
            event = {}


if __name__ == "__main__":
    main(*sys.argv[1:])
