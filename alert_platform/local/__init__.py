"""The embedded local stack: Kafka (Tansu), BigQuery emulator, Slack sandbox, demo seed."""
