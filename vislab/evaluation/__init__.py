"""Metrics per task."""
