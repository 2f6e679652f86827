"""The bundled LLM server, shared by the integration and chaos tiers. The unit tier uses no fixture from
here or from the service tiers' own conftest files, so it runs with no service reachable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.processes import llm_server
from tests.support import LLMControl


@pytest.fixture(scope="session")
def llm_url() -> Iterator[str]:
    with llm_server(latency_ms=20) as url:
        yield url


@pytest.fixture(scope="session")
def llm(llm_url: str) -> LLMControl:
    return LLMControl(llm_url)
