"""Metrics (Prometheus), structured logs and tracing (OpenTelemetry)."""
