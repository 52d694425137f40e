"""The lookup tables the pipelines join against, and how each is read from its topic.

Both topics carry one JSON object per record, keyed by the table key; a null value is a
tombstone (the key was deleted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from alert_platform import topics
from alert_platform.tables.lookup import LookupTable


class MalformedValue(ValueError):
    """A record value that cannot become a table row (the reason is the message)."""


def lower(key: str) -> str:
    """Normalise an e-mail address key (case-insensitive lookups).

    Returns ``key`` itself when it is lower case already, so a loaded table's keys share their
    strings with its e-mail column instead of holding a second copy (1M rows: ~90 MB less).
    """
    lowered = key.lower()
    return key if lowered == key else lowered


@dataclass(frozen=True)
class TableSpec:
    """A lookup table: its topic, key and columns.

    ``key_field`` is the key column (filled from the record key when the value lacks it);
    ``normalise_key`` is applied to every key on write and read (see ``LookupTable``).
    """

    name: str
    topic: str
    key_field: str
    columns: tuple[str, ...]
    normalise_key: Callable[[str], str] | None = None

    def new_table(self) -> LookupTable:
        """An empty table with this spec's columns."""
        return LookupTable(
            self.name, self.key_field, self.columns, normalise_key=self.normalise_key
        )

    def snapshot_path(self, snapshot_dir: Path) -> Path:
        return Path(snapshot_dir) / f"{self.name}.parquet"

    def parse_value(self, value: bytes) -> dict[str, Any]:
        """A JSON object value -> row (only this table's columns; missing ones are None)."""
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise MalformedValue(f"value is not valid JSON: {exc}") from None
        if type(document) is not dict:
            raise MalformedValue(f"value is JSON {type(document).__name__}, expected an object")
        return _row(document, self.columns)


def _row(document: Mapping[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    row = {}
    for column in columns:
        value = document.get(column)
        if value is not None and type(value) is not str:
            # Columns hold strings (or None): one Arrow type per column in snapshots.
            value = orjson.dumps(value).decode()
        row[column] = value
    return row


CSDR_ASSIGNMENTS = TableSpec(
    name="csdr_assignments",
    topic=topics.CSDR_ASSIGNMENT,
    key_field="org_id",
    columns=("org_id", "csdr_email", "csdr_name", "account_name"),
)

SLACK_USERS = TableSpec(
    name="slack_users",
    topic=topics.SLACK_USERS,
    key_field="email",
    columns=("email", "slack_user_id", "name"),
    normalise_key=lower,
)

# Key normalisers by name: a snapshot that derives its keys names the one it needs.
KEY_NORMALISERS: dict[str, Callable[[str], str]] = {"lower": lower}

TABLE_SPECS: dict[str, TableSpec] = {spec.name: spec for spec in (CSDR_ASSIGNMENTS, SLACK_USERS)}
