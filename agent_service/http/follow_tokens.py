"""Follow tokens: a browser's `EventSource` cannot send an Authorization header, so a key mints a token that
lets whoever holds it follow one task of its tenant for a short while (`?token=` on the events URL), and nothing
else. A token is `KEY_ID.EXPIRES.SIGNATURE`, the signature an HMAC-SHA256 of the key id, the task id and the
expiry under the key's stored hash: nothing is stored, and revoking the key revokes its tokens."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

from agent_service.http.keys import Caller

TTL_SECONDS = 900  # a page reconnecting after that mints a new one; tokens in URLs end up in logs


def mint(caller: Caller, task_id: uuid.UUID, *, now: float | None = None) -> tuple[str, int]:
    """A token following `task_id` for `caller`, and when it expires (epoch seconds)."""
    expires = int((time.time() if now is None else now) + TTL_SECONDS)
    return f"{caller.key_id}.{expires}.{_signature(caller.key_hash, caller.key_id, task_id, expires)}", expires


def key_id_of(token: str) -> uuid.UUID | None:
    """The key a token names; None when it is no token."""
    try:
        return uuid.UUID(token.split(".", 1)[0])
    except ValueError:
        return None


def is_valid(token: str, *, key_hash: str, task_id: uuid.UUID, now: float | None = None) -> bool:
    """Whether `token` was minted with the key of hash `key_hash` for `task_id`, and has not expired."""
    key_id, _, rest = token.partition(".")
    expires, _, signature = rest.partition(".")
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    expected = _signature(key_hash, uuid.UUID(key_id), task_id, int(expires))
    return hmac.compare_digest(signature, expected)


def _signature(key_hash: str, key_id: uuid.UUID, task_id: uuid.UUID, expires: int) -> str:
    return hmac.new(key_hash.encode(), f"{key_id}.{task_id}.{expires}".encode(), hashlib.sha256).hexdigest()
