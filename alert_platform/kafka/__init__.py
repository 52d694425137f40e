"""Kafka I/O: clients, exact offset ranges, batch producing, admin."""
