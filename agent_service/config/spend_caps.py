"""Spend caps: what users and agents may spend on LLM calls per day and per month."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SpendCapSettings(BaseModel):
    """Spend caps (an admission control): caps in USD, priced as LLM_PROVIDER and MODEL_PRICES say; each cap is
    off while unset."""

    spend_caps: bool = Field(
        False, description="check spend caps (on too when any *_SPEND_CAP_USD is set); per-agent/user caps alone"
    )
    user_daily_spend_cap_usd: float | None = Field(
        None, ge=0, description="USD each user may spend per UTC day (unset: none); overridable"
    )
    user_monthly_spend_cap_usd: float | None = Field(
        None, ge=0, description="USD each user may spend per UTC calendar month (unset: none); overridable"
    )
    agent_daily_spend_cap_usd: float | None = Field(
        None, ge=0, description="USD each agent may spend per UTC day (unset: none); overridable"
    )
    agent_monthly_spend_cap_usd: float | None = Field(
        None, ge=0, description="USD each agent may spend per UTC calendar month (unset: none); overridable"
    )
    spend_cap_mode: Literal["hold", "hard"] = Field(
        "hold", description="hold: a task that would pass its cap waits; hard: it fails"
    )
    spend_cap_recheck_seconds: float = Field(
        300.0, gt=0, description="a held task is looked at again this often while what is spent leaves it no room"
    )
    spend_cap_release_recheck_seconds: float = Field(
        2.0,
        gt=0,
        description="a held task that would fit once the calls in flight settle (their unused max_tokens given back)"
        " is looked at again this soon",
    )
    spend_hold_seconds: float = Field(
        300.0, gt=0, description="a call's reserved estimate is dropped after this long if its worker never settles it"
    )
