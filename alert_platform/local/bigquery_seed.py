"""Demo warehouse data for the BigQuery emulator: dataset ``settings.bigquery_dataset``, table
``accounts`` (the source of the scheduled "onboarding started" producer).

Rows are inserted with ``insert_rows_json`` and ISO-8601 timestamps (the emulator stores numeric
epochs wrongly). Seeding is idempotent: rows whose ``salesforce_account_id`` is already in the
table are skipped, so running it twice does not duplicate anything.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core.exceptions import Conflict
from google.cloud import bigquery

from alert_platform.bigquery.client import make_bigquery_client
from alert_platform.local.stack import SLACK_SEED_FILE
from alert_platform.settings import Settings

ACCOUNTS_TABLE = "accounts"

ACCOUNTS_SCHEMA: tuple[bigquery.SchemaField, ...] = (
    bigquery.SchemaField("salesforce_account_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("org_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("account_name", "STRING"),
    bigquery.SchemaField("plan", "STRING"),
    bigquery.SchemaField("onboarding_started_at", "TIMESTAMP"),
    bigquery.SchemaField("csdr_email", "STRING"),
    bigquery.SchemaField("region", "STRING"),
    bigquery.SchemaField("is_test", "BOOL"),
)

DEMO_ACCOUNT_COUNT = 30

_NAMES = (
    "Acme Analytics", "Borealis Foods", "Cobalt Freight", "Delta Dental Group", "Evergreen Labs",
    "Fjord Outdoor", "Granite Insurance", "Helios Energy", "Indigo Retail", "Juniper Health",
    "Kestrel Logistics", "Lumen Media", "Meridian Bank", "Nimbus Software", "Orchid Hotels",
    "Pioneer Agritech", "Quartz Semiconductors", "Redwood Realty", "Sierra Telecom",
    "Tundra Mining", "Umber Textiles", "Vantage Travel", "Willow Education", "Xenon Motors",
    "Yarrow Pharma", "Zephyr Airlines", "Atlas Robotics", "Beacon Security", "Cascade Water",
    "Dune Apparel",
)  # fmt: skip
_PLANS = ("starter", "team", "business", "enterprise")
_REGIONS = ("us-east", "us-west", "eu-central", "eu-west", "apac")
_FALLBACK_CSDRS = ("ada.lovelace@example.com", "grace.hopper@example.com")
# An account-team member without a Slack account (the demo's fallback-channel case).
_UNMAPPED_CSDR = "margaret.hamilton@example.com"


def _csdr_emails() -> list[str]:
    """Account-team emails: the Slack sandbox's seeded users plus one without a Slack user."""
    try:
        workspace = json.loads(SLACK_SEED_FILE.read_text())
        emails = [user["email"] for user in workspace.get("users", []) if user.get("email")]
    except (OSError, ValueError, TypeError, KeyError):
        emails = []
    return [*(emails or _FALLBACK_CSDRS), _UNMAPPED_CSDR]


def accounts_table_id(settings: Settings) -> str:
    """``project.dataset.accounts``."""
    return f"{settings.bigquery_project}.{settings.bigquery_dataset}.{ACCOUNTS_TABLE}"


def demo_accounts(
    now: datetime | None = None, count: int = DEMO_ACCOUNT_COUNT, seed: int = 7
) -> list[dict[str, Any]]:
    """``count`` deterministic demo rows, ``onboarding_started_at`` spread over the last 7 days.

    Ids and org ids are stable (``001DEMO000000000001``, ``org-0001``...): org ids follow the
    demo Kafka data, ``csdr_email`` the sandbox's seeded users. Every fifth is a test account.
    """
    csdrs = _csdr_emails()
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        started = now - timedelta(minutes=30 + (7 * 24 * 60 - 60) * i / max(count - 1, 1))
        started -= timedelta(seconds=rng.randrange(0, 600))
        rows.append(
            {
                "salesforce_account_id": f"001DEMO{i + 1:012d}",
                "org_id": f"org-{i + 1:04d}",
                "account_name": _NAMES[i % len(_NAMES)],
                "plan": _PLANS[rng.randrange(len(_PLANS))],
                "onboarding_started_at": started.isoformat().replace("+00:00", "Z"),
                "csdr_email": csdrs[i % len(csdrs)],
                "region": _REGIONS[rng.randrange(len(_REGIONS))],
                "is_test": i % 5 == 4,
            }
        )
    return rows


def ensure_accounts_table(
    settings: Settings, client: bigquery.Client | None = None
) -> bigquery.Table:
    """Create the dataset and the ``accounts`` table when missing; return the table."""
    client = client or make_bigquery_client(settings)
    dataset = bigquery.Dataset(f"{settings.bigquery_project}.{settings.bigquery_dataset}")
    client.create_dataset(dataset, exists_ok=True)
    table = bigquery.Table(accounts_table_id(settings), schema=list(ACCOUNTS_SCHEMA))
    try:
        return client.create_table(table, exists_ok=True)
    except Conflict:  # a concurrent seeder won the race
        return client.get_table(accounts_table_id(settings))


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    value = out.get("onboarding_started_at")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        out["onboarding_started_at"] = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return out


def seed_warehouse(
    settings: Settings,
    rows: Iterable[Mapping[str, Any]] | None = None,
    *,
    client: bigquery.Client | None = None,
) -> int:
    """Create dataset + ``accounts`` and insert ``rows`` (default: :func:`demo_accounts`).

    Rows whose ``salesforce_account_id`` already exists are skipped. Returns the number of rows
    inserted. ``onboarding_started_at`` may be a ``datetime`` or an ISO-8601 string.
    """
    client = client or make_bigquery_client(settings)
    ensure_accounts_table(settings, client)
    wanted = [_json_row(row) for row in (demo_accounts() if rows is None else rows)]
    if not wanted:
        return 0
    existing_ids = {
        row["salesforce_account_id"]
        for row in client.query(
            f"SELECT salesforce_account_id FROM `{accounts_table_id(settings)}`"
        ).result()
    }
    new_rows, seen = [], set(existing_ids)
    for row in wanted:
        account_id = row["salesforce_account_id"]
        if account_id not in seen:
            seen.add(account_id)
            new_rows.append(row)
    if not new_rows:
        return 0
    errors = client.insert_rows_json(
        accounts_table_id(settings),
        new_rows,
        row_ids=[row["salesforce_account_id"] for row in new_rows],
    )
    if errors:
        raise RuntimeError(f"inserting into {accounts_table_id(settings)} failed: {errors[:3]}")
    return len(new_rows)
