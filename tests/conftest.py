"""The bundled LLM and tool servers, shared by the integration and chaos tiers. The unit tier uses no fixture
from here or from the service tiers' own conftest files, so it runs with no service reachable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent_service.devtools import processes
from tests.support import LLMControl, ToolServerControl


@pytest.fixture(scope="session")
def llm_url() -> Iterator[str]:
    with processes.llm_server(latency_ms=20) as url:
        yield url


@pytest.fixture(scope="session")
def llm(llm_url: str) -> LLMControl:
    return LLMControl(llm_url)


@pytest.fixture(scope="session")
def tool_url() -> Iterator[str]:
    """The bundled tool server's base URL (`devtools/tool_server.py`), for agents' HTTP tools."""
    with processes.tool_server() as url:
        yield url


@pytest.fixture(scope="session")
def tool_server(tool_url: str) -> ToolServerControl:
    return ToolServerControl(tool_url)
