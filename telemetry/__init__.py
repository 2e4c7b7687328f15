"""Telemetry: the ingest pipeline, quarantine and the time-series store."""
