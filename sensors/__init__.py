"""Dagster sensors of alert-platform."""
