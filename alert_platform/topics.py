"""The Kafka topics the platform reads and writes, with how each is created."""

from __future__ import annotations

from dataclasses import dataclass, field

NOTIFICATIONS = "data-notifications-pipeline"
CSDR_ASSIGNMENT = "data-csdr-assignment"
SLACK_USERS = "data-slack-users"
ONBOARDING_EVENTS = "onboarding-events"
SLACK_MESSAGES = "slack-messages"
SLACK_RESPONSES = "slack-responses"
ALERTS_DLQ = "alerts-dlq"
SLACK_MESSAGES_DLQ = "slack-messages-dlq"


@dataclass(frozen=True)
class TopicSpec:
    """A topic's name, partition count and topic-level configs."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def compacted(self) -> bool:
        return self.config.get("cleanup.policy") == "compact"


_COMPACT = {"cleanup.policy": "compact"}

ALL_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(NOTIFICATIONS, 4, description="Notification events, keyed by org id."),
    TopicSpec(CSDR_ASSIGNMENT, 4, dict(_COMPACT), "Org id -> assigned account-team member."),
    TopicSpec(SLACK_USERS, 4, dict(_COMPACT), "Email -> Slack user id."),
    TopicSpec(ONBOARDING_EVENTS, 4, description="Onboarding-started events from BigQuery."),
    TopicSpec(SLACK_MESSAGES, 4, description="Rendered Slack alerts, keyed by alert id."),
    TopicSpec(SLACK_RESPONSES, 4, description="Outcome of every Slack delivery attempt."),
    TopicSpec(ALERTS_DLQ, 1, description="Source records the enrichment could not process."),
    TopicSpec(SLACK_MESSAGES_DLQ, 1, description="Alerts Slack refused permanently."),
)

TOPICS_BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in ALL_TOPICS}
