"""Observability: one OpenTelemetry trace across the ingress, the handler, its steps and HTTP."""
