"""Fault and bad-input suite: process kills, broker loss, Slack outages, hostile events and
configuration faults, each asserting that no alert is lost or posted twice.

Every scenario appends one JSON line to the results file (see :mod:`tests.faults.results`);
``python -m tests.faults.report`` prints them as a Markdown table (``make fault-report``).
"""
