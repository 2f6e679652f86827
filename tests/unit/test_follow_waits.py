"""How long a follower's blocking read of its task's stream waits: never as long as its client's socket timeout,
after which the client gives up on the reply (`live.follow`)."""

from __future__ import annotations

import redis

from agent_service.live.follow import POLL_SECONDS, _longest_wait


def test_a_followers_read_ends_well_before_its_clients_socket_timeout():
    # Given clients made from a URL (redis-py's default socket timeout, 5 s), with a short or no socket timeout
    default, short = (
        redis.Redis.from_url("redis://127.0.0.1:1/0"),
        redis.Redis.from_url("redis://127.0.0.1:1/0?socket_timeout=1"),
    )
    patient = redis.Redis(host="127.0.0.1", port=1, socket_timeout=None)
    # Then a read waits at most half the timeout, and POLL_SECONDS without one
    assert _longest_wait(default) == 2.5
    assert _longest_wait(short) == 0.5
    assert _longest_wait(patient) == POLL_SECONDS
