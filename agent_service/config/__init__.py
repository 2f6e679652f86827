"""Service settings: one pydantic-settings object, read from the environment and `.env` once.

The defaults run with zero configuration (a SQLite file, kombu's filesystem transport, the bundled offline LLM
server); `.env.example` shows the production values. The settings are grouped by concern, one module each
(`database`, `broker`, `worker`, `llm`, one per admission control, ...), and `settings.Settings` composes the
groups; docs/reference/settings.md lists them all (`python -m agent_service.config.reference` writes it).
"""

from agent_service.config.database import LOCAL_DATA_DIR
from agent_service.config.llm import OFFLINE_API_KEY, ModelPriceOverride, is_loopback_host
from agent_service.config.rate_limits import ModelRateLimit
from agent_service.config.settings import Settings, describe_invalid_settings, get_settings

__all__ = [
    "LOCAL_DATA_DIR",
    "OFFLINE_API_KEY",
    "ModelPriceOverride",
    "ModelRateLimit",
    "Settings",
    "describe_invalid_settings",
    "get_settings",
    "is_loopback_host",
]
