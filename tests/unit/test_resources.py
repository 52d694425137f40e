"""The Dagster resources own the run's clients: made at first use, closed at teardown."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import build_init_resource_context

from alert_platform.delivery.ledger import DeliveryLedger
from assets.resources import (
    BigQueryClientResource,
    DeliveryLedgerResource,
    KafkaProducerResource,
    PlatformResource,
)


def test_the_ledger_resource_opens_one_ledger_owned_by_the_run_and_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = PlatformResource(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    resource = DeliveryLedgerResource(platform=platform)
    closed: list[DeliveryLedger] = []
    monkeypatch.setattr(DeliveryLedger, "close", lambda self: closed.append(self))
    context = build_init_resource_context()
    resource.setup_for_execution(context)
    ledger = resource.get_ledger()
    assert resource.get_ledger() is ledger  # one per run
    assert ledger.url == platform.ledger_url
    resource.teardown_after_execution(context)
    assert closed == [ledger]
    resource.teardown_after_execution(context)  # nothing opened: nothing to close
    assert closed == [ledger]


def test_unused_clients_are_never_made(monkeypatch: pytest.MonkeyPatch) -> None:
    platform = PlatformResource(kafka_bootstrap_servers="127.0.0.1:1")

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a client was made that no step asked for")

    monkeypatch.setattr("alert_platform.kafka.writer.BatchProducer.from_settings", never)
    monkeypatch.setattr("alert_platform.bigquery.client.make_bigquery_client", never)
    context = build_init_resource_context()
    for resource in (
        KafkaProducerResource(platform=platform),
        BigQueryClientResource(platform=platform),
    ):
        resource.setup_for_execution(context)
        resource.teardown_after_execution(context)


def test_the_producer_resource_flushes_what_a_failed_step_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushed: list[float] = []

    class Producer:
        def flush(self, timeout: float) -> int:
            flushed.append(timeout)
            return 0

    class Batch:
        producer = Producer()

    monkeypatch.setattr(
        "alert_platform.kafka.writer.BatchProducer.from_settings", lambda *_a, **_k: Batch()
    )
    resource = KafkaProducerResource(platform=PlatformResource())
    context = build_init_resource_context()
    resource.setup_for_execution(context)
    assert resource.get_producer() is resource.get_producer()
    resource.teardown_after_execution(context)
    assert len(flushed) == 1
