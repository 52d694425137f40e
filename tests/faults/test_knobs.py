"""The environment knobs the fault suite turns (documented in the README's configuration)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alert_platform.delivery import ledger
from alert_platform.settings import ConfigError


def test_delivery_lease_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ledger.LEASE_ENV, "20")
    assert ledger._default_lease() == timedelta(seconds=20)
    monkeypatch.setenv(ledger.LEASE_ENV, "")
    assert ledger._default_lease() == timedelta(seconds=60)
    for bad in ("5", "soon", "nan"):  # below the Slack timeout's margin, or not a number
        monkeypatch.setenv(ledger.LEASE_ENV, bad)
        with pytest.raises(ConfigError, match=ledger.LEASE_ENV):
            ledger._default_lease()
