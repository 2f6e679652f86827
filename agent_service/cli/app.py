"""The configured app, for the commands that need it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_service.worker import AgentServiceCelery


def configured_app() -> AgentServiceCelery:
    """The configured app, built on first use: `--help` and `init-db` answer without it."""
    from agent_service import worker

    return worker.app
