"""Exactly-once Slack delivery: the ledger and the deliverer."""
