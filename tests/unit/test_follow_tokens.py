"""Follow tokens (`http.follow_tokens`): valid for the task and key they were minted with, until they expire."""

from __future__ import annotations

import uuid

from agent_service.http import follow_tokens
from agent_service.http.keys import Caller
from agent_service.store.api_keys import key_hash

CALLER = Caller("tenant", uuid.uuid4(), key_hash("ask_example"))
TASK = uuid.uuid4()


def test_a_token_follows_its_task_until_it_expires():
    token, expires = follow_tokens.mint(CALLER, TASK, now=1000.0)
    assert expires == 1000 + follow_tokens.TTL_SECONDS
    assert follow_tokens.key_id_of(token) == CALLER.key_id
    assert follow_tokens.is_valid(token, key_hash=CALLER.key_hash, task_id=TASK, now=expires)
    assert not follow_tokens.is_valid(token, key_hash=CALLER.key_hash, task_id=TASK, now=expires + 1)


def test_a_token_follows_no_other_task_and_no_altered_token_is_valid():
    token, _ = follow_tokens.mint(CALLER, TASK, now=1000.0)
    key_id, expires, signature = token.split(".")
    assert not follow_tokens.is_valid(token, key_hash=CALLER.key_hash, task_id=uuid.uuid4(), now=1000.0)
    assert not follow_tokens.is_valid(token, key_hash=key_hash("ask_other"), task_id=TASK, now=1000.0)
    longer = f"{key_id}.{int(expires) + 3600}.{signature}"
    assert not follow_tokens.is_valid(longer, key_hash=CALLER.key_hash, task_id=TASK, now=1000.0)
    assert follow_tokens.key_id_of("not-a-token") is None
