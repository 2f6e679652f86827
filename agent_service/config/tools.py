"""Tools: the outbound HTTP calls of an agent's tools (`tools.http.call_tool`, the api kind)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator


class ToolSettings(BaseModel):
    """Agent tools: the secrets their headers may name, and what one call may take (time, bytes, redirects,
    addresses)."""

    tool_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON: {"NAME": "value"}; a tool header {"secret": "NAME"} is sent with the value, never stored',
    )
    tool_timeout_seconds: float = Field(10.0, gt=0, description="a tool call's whole time, redirects included")
    tool_max_response_bytes: int = Field(64 * 1024, gt=0, description="a tool's reply is cut after this many bytes")
    tool_max_redirects: int = Field(3, ge=0, description="redirects a tool call follows, each one checked again")
    tool_allow_private_addresses: bool = Field(
        False, description="let tools reach loopback, private and link-local addresses (tests and demo only)"
    )

    @field_validator("tool_secrets")
    @classmethod
    def _tool_secrets_are_header_values(cls, secrets: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """A value that cannot be a header would fail at every call, in an error that could quote it."""
        for name, value in secrets.items():
            if any(character in value.get_secret_value() for character in "\r\n\0"):
                raise ValueError(f"TOOL_SECRETS: the value of {name} must be one line (it is sent as a header)")
        return secrets
