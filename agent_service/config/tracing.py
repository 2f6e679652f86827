"""Tracing (`tracing`): OpenTelemetry traces of each task, exported over OTLP/HTTP. The settings keep
OpenTelemetry's own environment variable names, so a deployment configured for other OpenTelemetry services works
here as it does there."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, Field, SecretStr

# OpenTelemetry's sampler names (OTEL_TRACES_SAMPLER); the ratio ones take OTEL_TRACES_SAMPLER_ARG.
TraceSampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


class TracingSettings(BaseModel):
    """Traces: off unless an OTLP endpoint is set. Each process (the caller that submits, the worker, its LLM
    process) exports its spans in batches on a thread of its own; nothing is imported from OpenTelemetry while
    tracing is off. Other OTEL_* variables the SDK reads itself (OTEL_RESOURCE_ATTRIBUTES,
    OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_BSP_MAX_QUEUE_SIZE, ...) apply too, from the environment."""

    otel_exporter_otlp_endpoint: AnyHttpUrl | None = Field(
        None, description="the OTLP/HTTP collector's base URL (spans go to its /v1/traces); unset: no traces"
    )
    otel_exporter_otlp_traces_endpoint: AnyHttpUrl | None = Field(
        None, description="the full URL spans are posted to, instead of OTEL_EXPORTER_OTLP_ENDPOINT's /v1/traces"
    )
    otel_exporter_otlp_headers: SecretStr | None = Field(
        None, description="headers sent with each export, as key=value,key2=value2 (an API key, say)"
    )
    otel_sdk_disabled: bool = Field(False, description="true: no traces, whatever endpoint is set")
    otel_service_name: str = Field("agent-service", min_length=1, description="the service.name of every span")
    otel_traces_sampler: TraceSampler = Field(
        "parentbased_always_on",
        description="which traces are kept: parent-based ones follow the caller's decision across processes",
    )
    otel_traces_sampler_arg: float = Field(1.0, ge=0, le=1, description="the share of traces the ratio samplers keep")
    otel_bsp_schedule_delay: int = Field(
        5000, ge=1, description="milliseconds between two exports of a process's finished spans"
    )

    @property
    def tracing_enabled(self) -> bool:
        """Whether spans are recorded and exported: an endpoint is set and the SDK is not disabled."""
        endpoint = self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint
        return endpoint is not None and not self.otel_sdk_disabled

    @property
    def otlp_traces_url(self) -> str:
        """Where spans are posted: the traces endpoint as given, or the base endpoint's /v1/traces (as the
        OpenTelemetry SDKs build it)."""
        if self.otel_exporter_otlp_traces_endpoint is not None:
            return str(self.otel_exporter_otlp_traces_endpoint)
        return f"{str(self.otel_exporter_otlp_endpoint).rstrip('/')}/v1/traces"
