"""What one tool call came to, as the agent loop records it and the model reads it: apart from `tools.http`,
so that a process loads the HTTP client only once it makes a call."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What one tool call came to. `ok`: a 2xx reply arrived. `error`: why there is no usable reply (then the
    model sees only that). `truncated`: the reply was longer than TOOL_MAX_RESPONSE_BYTES and was cut there."""

    ok: bool
    status: int | None
    body: str
    error: str | None
    truncated: bool
    elapsed_ms: int

    def as_model_text(self) -> str:
        """The tool result as the model reads it: the status and the body, or the error."""
        if self.error is not None:
            return f"error: {self.error}"
        cut = "\n[response truncated]" if self.truncated else ""
        return f"HTTP {self.status}\n{self.body}{cut}"
