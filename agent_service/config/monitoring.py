"""Monitoring: the Prometheus exporter and the log format."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, Field


class MonitoringSettings(BaseModel):
    """Metrics and logs: the Prometheus exporter of each worker, and JSON or plain log lines."""

    metrics_port: int = Field(0, ge=0, le=65535, description="0 disables the Prometheus exporter")
    # Loopback unless the operator opens it: the exporter has no login (the Docker image sets 0.0.0.0).
    metrics_address: str = Field("127.0.0.1", description="where the Prometheus exporter listens")
    metrics_multiprocess: bool = Field(
        True,
        description="the exporter serves the metrics of every process of its worker (pool children, LLM "
        "processes) from files in METRICS_MULTIPROCESS_DIR; false: only the main process's",
    )
    metrics_multiprocess_dir: Path | None = Field(
        None,
        description="the worker's metric files, emptied when it starts: one folder per worker, never shared "
        "(default: agent_service_metrics_<METRICS_PORT> in the system's temporary folder)",
    )
    log_json: bool = Field(True, description="log one JSON object per line (false: plain text lines)")

    @property
    def metrics_files(self) -> Path | None:
        """Where this worker's processes keep their metrics; None when each keeps its own in memory (the
        exporter off, or METRICS_MULTIPROCESS=false)."""
        if not (self.metrics_port and self.metrics_multiprocess):
            return None
        return (
            self.metrics_multiprocess_dir or Path(tempfile.gettempdir()) / f"agent_service_metrics_{self.metrics_port}"
        )
