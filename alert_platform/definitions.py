"""The Dagster definitions of alert-platform: the one module that wires assets/ and sensors/.

Lineage: Kafka topics -> lookup tables -> <pipeline>_alerts -> <pipeline>_deliveries (the
run's own, inline) and slack-messages -> slack_deliveries (the catch-up) -> slack-responses.
Every deployment is configured by environment variables (see README "Configuration"); the
Slack token is always ``EnvVar("SLACK_BOT_TOKEN")``.
"""

from dagster import (
    AssetKey,
    AssetSelection,
    Definitions,
    EnvVar,
    define_asset_job,
    in_process_executor,
)

from alert_platform import topics
from alert_platform.delivery.runner import ranges_already_delivered
from alert_platform.pipelines.registry import PIPELINES
from assets.alerts import ALERT_ASSETS, alerts_asset_name, deliveries_asset_name
from assets.deliveries import slack_deliveries
from assets.lookup_tables import TABLE_ASSETS, TABLE_CHECKS
from assets.maintenance import (
    platform_state_retention,
    state_retention_job,
    state_retention_schedule,
)
from assets.onboarding import (
    onboarding_producer_job,
    onboarding_producer_schedule,
    onboarding_started_events,
    warehouse_accounts,
)
from assets.resources import (
    BigQueryClientResource,
    DeliveryLedgerResource,
    KafkaProducerResource,
    PlatformResource,
    SlackDeliveryResource,
)
from assets.streams import STREAM_CHECKS, alert_stream_job
from assets.topics import topic_asset_key, topic_spec
from sensors.run_failure import ops_run_failure_to_slack, ops_run_success_resolves
from sensors.stream_supervisor import stream_supervisor
from sensors.tables import LOOKUP_TABLES_JOB, make_table_refresh_sensor
from sensors.topic_tail import make_topic_tail_sensor

SLACK_DELIVERY_JOB = "slack_delivery_job"
PLATFORM = PlatformResource()

alert_keys = [AssetKey(alerts_asset_name(spec)) for spec in PIPELINES.values()]
delivery_keys = [
    slack_deliveries.key,
    *(AssetKey(deliveries_asset_name(spec)) for spec in PIPELINES.values()),
]
# Source topics written by an asset of ours: drawn as that asset's downstream.
topic_writers = {topics.ONBOARDING_EVENTS: [onboarding_started_events.key]}
source_topics = dict.fromkeys([*(spec.source_topic for spec in PIPELINES.values()), *topic_writers])

topic_assets = [
    *(topic_spec(topic, deps=topic_writers.get(topic)) for topic in source_topics),
    topic_spec(topics.CSDR_ASSIGNMENT),
    topic_spec(topics.SLACK_USERS),
    topic_spec(topics.SLACK_MESSAGES, deps=alert_keys),
    topic_spec(topics.ALERTS_DLQ, deps=alert_keys),
    topic_spec(topics.SLACK_RESPONSES, deps=delivery_keys),
    topic_spec(topics.SLACK_MESSAGES_DLQ, deps=delivery_keys),
]

alert_jobs = [
    define_asset_job(
        f"{name}_alerts_job",
        # The stream checks run from the supervisor (or the UI), never inside an alerts run.
        selection=AssetSelection.assets(ALERT_ASSETS[name]) - AssetSelection.checks(*STREAM_CHECKS),
        description=(
            f"Enrich `{spec.source_topic}` with pipeline `{name}` into `slack-messages`, and "
            "deliver the alerts inline unless ALERT_PLATFORM_INLINE_DELIVERY=false."
        ),
    )
    for name, spec in PIPELINES.items()
]

tail_sensors = [
    make_topic_tail_sensor(
        name=f"{name}_tail",
        topic=spec.source_topic,
        job_name=f"{name}_alerts_job",
        op_name=alerts_asset_name(spec),
        partitioned=True,
    )
    for name, spec in PIPELINES.items()
]

delivery_sensor = make_topic_tail_sensor(
    name="slack_delivery_tail",
    topic=topics.SLACK_MESSAGES,
    job_name=SLACK_DELIVERY_JOB,
    op_name=slack_deliveries.key.to_user_string(),
    partitioned=False,
    max_records_per_run=2_000,
    settle_one_tick=True,
    needs_no_run=ranges_already_delivered,
    description=(
        "Delivers `slack-messages` ranges that enrichment runs did not deliver inline (and all "
        "of them with ALERT_PLATFORM_INLINE_DELIVERY=false); skips the ranges the ledger "
        "database records as handled (no Kafka read in the tick)."
    ),
)


defs = Definitions(
    assets=[
        *topic_assets,
        *TABLE_ASSETS,
        *ALERT_ASSETS.values(),
        slack_deliveries,
        warehouse_accounts,
        onboarding_started_events,
        platform_state_retention,
    ],
    asset_checks=[*TABLE_CHECKS, *STREAM_CHECKS],
    jobs=[
        *alert_jobs,
        define_asset_job(
            SLACK_DELIVERY_JOB,
            selection=AssetSelection.assets(slack_deliveries)
            - AssetSelection.checks(*STREAM_CHECKS),
        ),
        define_asset_job(LOOKUP_TABLES_JOB, selection=AssetSelection.assets(*TABLE_ASSETS)),
        onboarding_producer_job,
        state_retention_job,
        alert_stream_job,
    ],
    schedules=[onboarding_producer_schedule, state_retention_schedule],
    sensors=[
        *tail_sensors,
        delivery_sensor,
        make_table_refresh_sensor(),
        ops_run_failure_to_slack,
        ops_run_success_resolves,
        stream_supervisor,
    ],
    resources={
        "platform": PLATFORM,
        "slack": SlackDeliveryResource(token=EnvVar("SLACK_BOT_TOKEN")),
        "kafka": KafkaProducerResource(platform=PLATFORM),
        "ledger": DeliveryLedgerResource(platform=PLATFORM),
        "bigquery": BigQueryClientResource(platform=PLATFORM),
    },
    executor=in_process_executor,
)

__all__ = ["defs", "topic_asset_key"]
