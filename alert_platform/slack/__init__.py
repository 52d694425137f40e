"""Slack rendering: mrkdwn escaping, Block Kit, the Web API client."""
