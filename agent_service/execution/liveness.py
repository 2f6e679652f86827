"""Who holds a task's claim, whether that process is provably gone, and the liveness lease it keeps.

Hand-written because no library answers it: a pool child killed mid-task leaves its row `running`,
and Celery redelivers the message at once. If the claim's owner was a process on this same host
(and pid namespace) that no longer exists, the redelivery may take the task over immediately
instead of waiting for the stale threshold. Owners elsewhere are known lost only by their lease: every
task-running process renews one in the database from a thread of its own (`LeaseKeeper`), whatever its
tasks are doing, and the sweeper re-queues the running tasks of an owner whose lease expired
(docs/decisions.md, "Liveness leases in PostgreSQL").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from agent_service.database import session_scope
from agent_service.store import leases

logger = logging.getLogger(__name__)
# While renewing fails (the database unreachable), try again this often: a lease renewed within a second of
# the database's return is one the sweeper is unlikely to find expired.
RETRY_SECONDS = 1.0


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


class LeaseKeeper:
    """Renews this process's liveness lease every third of `seconds` on a daemon thread, from `start` until
    `stop`, which ends the lease. A failed renewal is logged and tried again every RETRY_SECONDS; the tasks
    are never stopped for it (a worker cut off from the database cannot record them anyway, and the claim's
    compare-and-set keeps one taken over from completing twice)."""

    def __init__(self, session_factory: sessionmaker[Session], *, seconds: float, owner: str | None = None) -> None:
        self._session_factory, self._seconds = session_factory, seconds
        self.owner = owner or current_owner()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take the lease (before the first claim, when the database answers) and keep it from a thread."""
        renewed = self.renew()
        self._thread = threading.Thread(target=self._keep, args=(renewed,), name="lease-keeper", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Renew the lease once; returns whether it was."""
        try:
            with session_scope(self._session_factory) as session:
                leases.renew(session, self.owner, seconds=self._seconds)
            return True
        except Exception as exc:  # any failure: the thread must outlive it
            logger.warning("liveness lease of %s not renewed: %s", self.owner, exc)
            return False

    def stop(self) -> None:
        """Stop renewing and end the lease (best effort: a lease left behind expires by itself)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with session_scope(self._session_factory) as session:
                leases.release(session, self.owner)
        except Exception as exc:
            logger.warning("liveness lease of %s not released (it expires by itself): %s", self.owner, exc)

    def _keep(self, renewed: bool) -> None:
        while not self._stopped.wait(self._seconds / 3 if renewed else RETRY_SECONDS):
            renewed = self.renew()
