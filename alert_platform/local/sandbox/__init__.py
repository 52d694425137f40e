"""Local Slack Web API sandbox: a stdlib HTTP server that ``slack_sdk.WebClient`` can talk to.

Run it with ``SLACK_BOT_TOKEN=xoxb-... python -m alert_platform.local.sandbox --port 8025``, or in
a thread with ``SandboxServer(...).start()``; drive it with ``SandboxControl``.
"""

from alert_platform.local.sandbox.control import SandboxControl, SandboxControlError
from alert_platform.local.sandbox.server import SandboxServer, serve

__all__ = ["SandboxControl", "SandboxControlError", "SandboxServer", "serve"]
