"""Rate limits: requests and tokens per minute per model, reserved before each call."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelRateLimit(BaseModel):
    """Requests and tokens per minute for one model (either may be absent: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)


class RateLimitSettings(BaseModel):
    """Rate limits (an admission control): each model's requests and tokens per minute, across every worker."""

    rate_limits_enabled: bool = Field(False, description="reserve requests and tokens per minute before each call")
    llm_rate_limits: dict[str, ModelRateLimit] = Field(
        default_factory=dict, description='per model, as JSON: {"gpt-4o-mini": {"rpm": 500, "tpm": 200000}}'
    )
    # A quarter second, and a quarter more of lateness: a provider smooths its per-minute limit over one second,
    # and the other half is the slack for the way from the check to the provider on a busy host (docs/decisions.md,
    # "Rate limits: a slot is taken when the call leaves").
    rate_limit_burst_seconds: float = Field(
        0.25, gt=0, description="a rate limit lets through at most this many seconds of its rate at once"
    )
    rate_limit_late_seconds: float = Field(
        0.25,
        ge=0,
        description=(
            "a call admitted by the rate limits that has not left this long after its slot (a busy host) takes a "
            "new one as it leaves"
        ),
    )
    rate_limit_max_wait_seconds: float = Field(
        1.0,
        ge=0,
        description="a call that leaves late waits this long at most for a new slot; beyond, it is not sent and its"
        " task is deferred",
    )
    rate_limit_count_max_tokens: bool = Field(
        True,
        description=(
            "a call's tokens reserved before it leaves include its max_tokens, as OpenAI counts them toward TPM "
            "on arrival; off, the prompt only, the reply's tokens added once it arrives (a provider that counts "
            "what was used)"
        ),
    )
