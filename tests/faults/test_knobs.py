"""The environment knobs the fault suite turns (documented in the README's configuration)."""

from __future__ import annotations

import pytest

from alert_platform.delivery import ledger
from alert_platform.settings import ConfigError, Settings
from tests.faults.harness import LEASE_ENV


def test_delivery_lease_comes_from_the_environment_through_settings() -> None:
    # The ledger no longer reads the environment at import; callers pass the setting.
    assert not hasattr(ledger, "LEASE_ENV")
    assert ledger.DEFAULT_LEASE.total_seconds() == 60
    assert Settings.from_env({LEASE_ENV: "20"}).delivery_lease_s == 20
    assert Settings.from_env({}).delivery_lease_s == 60
    for bad in ("5", "soon", "nan"):  # below the Slack call deadline's margin, or not a number
        with pytest.raises(ConfigError, match=LEASE_ENV):
            Settings.from_env({LEASE_ENV: bad}).validate()
