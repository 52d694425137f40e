"""alert-platform: turn Kafka and BigQuery events into timely, actionable Slack alerts."""

__version__ = "0.1.0"
