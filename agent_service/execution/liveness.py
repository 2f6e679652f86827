"""Who holds a task's claim, and whether that process is provably gone.

Hand-written because no library answers it: a pool child killed mid-task leaves its row `running`,
and Celery redelivers the message at once. If the claim's owner was a process on this same host
(and pid namespace) that no longer exists, the redelivery may take the task over immediately
instead of waiting for the stale threshold. Owners elsewhere are never presumed dead.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache


@lru_cache(maxsize=1)
def _host_and_namespace() -> str:
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def current_owner() -> str:
    """This process as a claim owner: host/pid-namespace/pid."""
    return f"{_host_and_namespace()}/{os.getpid()}"


def owner_is_gone(owner: str | None) -> bool:
    """True only when `owner` ran in this host's pid namespace and that pid no longer exists."""
    if not owner:
        return False
    place, _, pid = owner.rpartition("/")
    if place != _host_and_namespace() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
