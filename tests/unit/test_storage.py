"""The platform's SQLite storage under concurrent first use of a fresh file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import sqlalchemy as sa

from alert_platform.storage import StateTables, make_engine

_METADATA = sa.MetaData()
_COUNTS = sa.Table(
    "counts",
    _METADATA,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)


class _Counter(StateTables):
    def __init__(self, url: str) -> None:
        super().__init__(url, _METADATA, "test_storage.ddl")

    def bump(self) -> None:
        with self._begin() as conn:
            row = conn.execute(sa.select(_COUNTS.c.n).where(_COUNTS.c.name == "x")).first()
            if row is None:
                conn.execute(_COUNTS.insert().values(name="x", n=1))
            else:
                conn.execute(_COUNTS.update().values(n=row.n + 1))


def _run_threads(workers: int, target: object) -> list[BaseException]:
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            target()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_a_fresh_file_opened_by_many_threads_at_once_is_switched_to_wal_once(
    tmp_path: Path,
) -> None:
    for round_ in range(40):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.db'}"

        def open_and_write(url: str = url) -> None:
            engine = make_engine(url)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                    conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            finally:
                engine.dispose()

        assert _run_threads(8, open_and_write) == []
        database = url.removeprefix("sqlite:///")
        with sqlite3.connect(database) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 8


def test_state_tables_created_by_many_threads_at_once_lose_no_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"

    def bump() -> None:
        with _Counter(url) as counter:
            counter.bump()

    assert _run_threads(8, bump) == []
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(_COUNTS.c.n)).scalar_one() == 8
    engine.dispose()
