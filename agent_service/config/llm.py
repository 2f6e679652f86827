"""LLM: the OpenAI-compatible endpoint, its models, how calls are run, and the prices they cost."""

from __future__ import annotations

import ipaddress
from typing import Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

# Only the bundled offline server (`devtools/llm_server/`), which runs on loopback, takes this key.
OFFLINE_API_KEY = "offline-key"


class ModelPriceOverride(BaseModel):
    """A model's prices in USD per million tokens, for a model genai-prices does not know (or priced otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0, description="the input price when not given")


class LLMSettings(BaseModel):
    """LLM: the endpoint and model, the calls at once and where they run, and the prices (from genai-prices for
    LLM_PROVIDER; MODEL_PRICES adds or overrides a model's)."""

    openai_api_key: SecretStr = Field(
        SecretStr(""), description="required unless OPENAI_BASE_URL is the bundled server on loopback"
    )
    openai_base_url: str | None = Field(
        "http://127.0.0.1:8099/v1", description="an OpenAI-compatible endpoint (unset: api.openai.com)"
    )
    default_model: str = Field(
        "gpt-4o-mini", description="the model `python cli.py create-agent` gives an agent without --model"
    )
    llm_timeout_seconds: float = Field(60.0, gt=0, description="one LLM call's whole time, before it is retried")
    llm_concurrency: int = Field(1536, ge=1, le=5000, description="LLM calls at once per worker process")
    llm_process: bool = Field(True, description="run the LLM calls in a child process with a core of its own")
    llm_provider: str = Field("openai", description="whose prices apply (a genai-prices provider id)")
    model_prices: dict[str, ModelPriceOverride] = Field(
        default_factory=dict,
        description='JSON: {"model": {"input_per_mtok": 0.1, "output_per_mtok": 0.2, "cached_input_per_mtok": 0.05}}',
    )

    @model_validator(mode="after")
    def _api_key_given_unless_offline(self) -> Self:
        if self.openai_api_key.get_secret_value():
            return self
        if not _is_bundled_server(self.openai_base_url):
            raise ValueError(
                "OPENAI_API_KEY is required: OPENAI_BASE_URL is not the bundled offline server on loopback"
            )
        self.openai_api_key = SecretStr(OFFLINE_API_KEY)
        return self


def _is_bundled_server(base_url: str | None) -> bool:
    """Whether the LLM endpoint may be the bundled offline server: one on this machine (loopback).
    None means the OpenAI client's default, api.openai.com."""
    if not base_url:
        return False
    return is_loopback_host(urlsplit(base_url).hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine's loopback: only the name "localhost" is known
    to be; any other name, or "" (every address), is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
