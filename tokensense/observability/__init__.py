"""Operations: Prometheus metrics, OpenTelemetry GenAI spans and budget alerts (see the README's Operations section)."""
