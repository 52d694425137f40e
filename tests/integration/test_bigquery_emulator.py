"""The BigQuery emulator through the official client: parameters, seeded warehouse table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import bigquery

from alert_platform.bigquery.client import make_bigquery_client, query_to_dataframe
from alert_platform.local.bigquery_seed import (
    ACCOUNTS_SCHEMA,
    DEMO_ACCOUNT_COUNT,
    accounts_table_id,
    demo_accounts,
    seed_warehouse,
)
from alert_platform.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bq(bigquery_settings: Settings) -> bigquery.Client:
    return make_bigquery_client(bigquery_settings)


@pytest.fixture(scope="module")
def seeded(bigquery_settings: Settings, bq: bigquery.Client) -> Settings:
    """Demo rows in a private dataset (other tests may seed the shared ``warehouse``)."""
    settings = bigquery_settings.with_overrides(bigquery_dataset=f"seed_{uuid.uuid4().hex[:10]}")
    assert seed_warehouse(settings, client=bq) == DEMO_ACCOUNT_COUNT
    return settings


def test_client_targets_the_emulator(bigquery_settings: Settings, bq: bigquery.Client) -> None:
    assert bq.project == bigquery_settings.bigquery_project
    assert bigquery_settings.bigquery_api_endpoint == bq._connection.API_BASE_URL


def test_scalar_and_array_parameters(bq: bigquery.Client) -> None:
    now = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
    frame = query_to_dataframe(
        bq,
        "SELECT @n + 1 AS n, CONCAT(@s, '!') AS s, @flag AS flag, @ts AS ts, "
        "ARRAY_LENGTH(@names) AS names, (SELECT SUM(x) FROM UNNEST(@nums) AS x) AS total, "
        "'b' IN UNNEST(@names) AS has_b",
        {"n": 41, "s": "hi", "flag": True, "ts": now, "names": ["a", "b", "c"], "nums": [1, 2, 3]},
    )
    row = frame.iloc[0]
    assert int(row["n"]) == 42
    assert row["s"] == "hi!"
    assert bool(row["flag"]) is True
    assert row["ts"].to_pydatetime() == now
    assert int(row["names"]) == 3
    assert int(row["total"]) == 6
    assert bool(row["has_b"]) is True


def test_explicit_query_parameter_objects(bq: bigquery.Client) -> None:
    frame = query_to_dataframe(
        bq,
        "SELECT x FROM UNNEST(@xs) AS x WHERE x > @floor ORDER BY x",
        [
            bigquery.ArrayQueryParameter("xs", "INT64", [5, 1, 9, 3]),
            bigquery.ScalarQueryParameter("floor", "INT64", 2),
        ],
    )
    assert frame["x"].tolist() == [3, 5, 9]


def test_seeded_accounts_are_queryable(seeded: Settings, bq: bigquery.Client) -> None:
    table = bq.get_table(accounts_table_id(seeded))
    assert [(f.name, f.field_type) for f in table.schema] == [
        (f.name, f.field_type) for f in ACCOUNTS_SCHEMA
    ]
    frame = query_to_dataframe(
        bq,
        f"SELECT * FROM `{accounts_table_id(seeded)}` "
        "WHERE onboarding_started_at >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @days DAY) "
        "AND NOT is_test ORDER BY onboarding_started_at",
        {"days": 8},
    )
    expected = [row for row in demo_accounts() if not row["is_test"]]
    assert len(frame) == len(expected)
    assert frame["salesforce_account_id"].is_unique
    started = frame["onboarding_started_at"]
    assert str(started.dt.tz) == "UTC"
    now = datetime.now(UTC)
    # ISO timestamps are stored as the instants they name (numeric epochs would not be).
    assert started.min().to_pydatetime() > now - timedelta(days=7, hours=1)
    assert started.max().to_pydatetime() < now


def test_seed_is_idempotent(seeded: Settings, bq: bigquery.Client) -> None:
    count_sql = f"SELECT COUNT(*) AS n FROM `{accounts_table_id(seeded)}`"
    before = int(query_to_dataframe(bq, count_sql)["n"][0])
    assert before >= DEMO_ACCOUNT_COUNT
    assert seed_warehouse(seeded, client=bq) == 0
    assert int(query_to_dataframe(bq, count_sql)["n"][0]) == before


def test_seed_custom_rows_with_datetimes(seeded: Settings, bq: bigquery.Client) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = {
        "salesforce_account_id": "001CUSTOM0000000001",
        "org_id": "org-custom",
        "account_name": "Custom & Co <test>",
        "plan": "enterprise",
        "onboarding_started_at": when,
        "csdr_email": "x@example.com",
        "region": "eu-west",
        "is_test": False,
    }
    seed_warehouse(seeded, [row], client=bq)
    assert seed_warehouse(seeded, [row], client=bq) == 0
    frame = query_to_dataframe(
        bq,
        f"SELECT account_name, onboarding_started_at FROM `{accounts_table_id(seeded)}` "
        "WHERE salesforce_account_id = @id",
        {"id": row["salesforce_account_id"]},
    )
    assert len(frame) == 1
    assert frame["account_name"][0] == "Custom & Co <test>"
    assert frame["onboarding_started_at"][0].to_pydatetime() == when
