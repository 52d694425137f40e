"""Dagster assets of alert-platform."""
