"""BigQuery source for scheduled events."""
