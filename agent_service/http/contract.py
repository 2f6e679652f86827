"""The API's OpenAPI document as committed (docs/reference/openapi.json):
`python -m agent_service.http.contract > docs/reference/openapi.json` after changing a route or a schema
(tests/unit/test_http_contract.py fails while the committed document differs from the served one)."""

from __future__ import annotations

import json
from typing import Any

from agent_service.config import Settings
from agent_service.http.app import create_api
from agent_service.worker import create_celery_app

COMMAND = "python -m agent_service.http.contract > docs/reference/openapi.json"


def document(settings: Settings) -> dict[str, Any]:
    """The document `/openapi.json` serves (it does not depend on the settings' values)."""
    return create_api(create_celery_app(settings)).openapi()


def render(settings: Settings) -> str:
    """The document as committed: indented, keys in a stable order."""
    return json.dumps(document(settings), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(Settings()), end="")
