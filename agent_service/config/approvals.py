"""Approvals: tool calls that wait for a reviewer before they run."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ApprovalSettings(BaseModel):
    """Approvals: how long a tool call waits for a reviewer."""

    approval_timeout_seconds: float = Field(
        24 * 3600, gt=0, description="a tool call awaiting approval this long fails its task"
    )
