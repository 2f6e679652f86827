"""Monitoring: the Prometheus exporter and the log format."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MonitoringSettings(BaseModel):
    """Metrics and logs: the Prometheus exporter of each worker, and JSON or plain log lines."""

    metrics_port: int = Field(0, ge=0, le=65535, description="0 disables the Prometheus exporter")
    # Loopback unless the operator opens it: the exporter has no login (the Docker image sets 0.0.0.0).
    metrics_address: str = Field("127.0.0.1", description="where the Prometheus exporter listens")
    log_json: bool = Field(True, description="log one JSON object per line (false: plain text lines)")
