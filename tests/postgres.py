"""The PostgreSQL every machine here runs (127.0.0.1:5432, trust auth, database ``test``), for
the ledger, outbox and ops-state tests: they fail, never skip, when it cannot be reached."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

PG_URL = os.environ.get(
    "ALERT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


def postgres_engine() -> Engine:
    """An engine on :data:`PG_URL`; the test fails, naming the URL, when it is unreachable."""
    engine = sa.create_engine(PG_URL)
    try:
        engine.connect().close()
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.fail(f"PostgreSQL not reachable at {PG_URL}: {exc.orig}")
    return engine
