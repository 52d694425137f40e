"""Lookup-table snapshots: round trip, offsets and metadata, atomic replace, bad files."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from alert_platform.tables.lookup import KEY, LookupTable
from alert_platform.tables.snapshot import (
    SnapshotError,
    load_snapshot,
    read_snapshot_info,
    save_snapshot,
)
from alert_platform.tables.specs import CSDR_ASSIGNMENTS, SLACK_USERS, MalformedValue, lower


def users(n: int = 3) -> LookupTable:
    table = SLACK_USERS.new_table()
    for i in range(n):
        email = f"Person.{i}@Example.com" if i % 2 else f"person.{i}@example.com"
        table.upsert(email, {"email": email, "slack_user_id": f"U{i}", "name": f"Person {i} é"})
    return table


def assignments(n: int, members: int = 5) -> LookupTable:
    table = CSDR_ASSIGNMENTS.new_table()
    for i in range(n):
        member = i % members
        table.upsert(
            f"org-{i}",
            {
                "org_id": f"org-{i}",
                "csdr_email": None if member == 0 else f"m{member}@x.io",
                "csdr_name": f"Member {member}",
                "account_name": f"Account {i}",
            },
        )
    return table


def rows(table: LookupTable) -> dict[str, dict]:
    return dict(table.items())


def test_round_trip_keeps_rows_keys_and_offsets(tmp_path: Path) -> None:
    path = tmp_path / "snaps" / "slack_users.parquet"  # the directory is created
    table = users(5)
    table.delete("person.2@example.com")
    info = save_snapshot(table, {0: 17, 3: 4}, path, topic="data-slack-users", normalise_key=lower)
    assert info.rows == 4 and info.offsets == {0: 17, 3: 4} and info.table == "slack_users"

    loaded, offsets = load_snapshot(path, SLACK_USERS)
    assert offsets == {0: 17, 3: 4}
    assert rows(loaded) == rows(table)
    assert loaded.get("PERSON.1@EXAMPLE.COM") == table.get("person.1@example.com")
    assert loaded.get("person.2@example.com") is None
    assert loaded.columns == SLACK_USERS.columns and loaded.name == "slack_users"

    stored = read_snapshot_info(path)
    assert stored is not None
    assert (stored.table, stored.key_column, stored.topic) == (
        "slack_users",
        "email",
        "data-slack-users",
    )
    assert stored.columns == SLACK_USERS.columns and stored.offsets == {0: 17, 3: 4}
    assert stored.created_at.endswith("Z")


def test_without_spec_the_file_describes_itself(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    save_snapshot(assignments(20), {0: 20}, path)
    loaded, offsets = load_snapshot(path)
    assert offsets == {0: 20} and rows(loaded) == rows(assignments(20))
    assert loaded.key_column == "org_id"


def test_repeated_values_are_dictionary_encoded_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    table = assignments(1000)
    info = save_snapshot(table, {0: 1000}, path)
    assert set(info.dictionary_columns) == {"csdr_email", "csdr_name"}
    loaded, _ = load_snapshot(path, CSDR_ASSIGNMENTS)
    assert rows(loaded) == rows(table)
    assert loaded.get("org-0")["csdr_email"] is None  # type: ignore[index]
    emails = loaded.to_columns()["csdr_email"]
    assert emails[1] is emails[6]  # one str object per distinct value


def test_keys_are_stored_only_when_not_derivable(tmp_path: Path) -> None:
    derivable = tmp_path / "derivable.parquet"
    save_snapshot(users(4), {}, derivable, normalise_key=lower)
    assert KEY not in pq.read_schema(derivable).names
    loaded, _ = load_snapshot(derivable, SLACK_USERS)
    assert sorted(loaded) == sorted(users(4))

    # Without the spec, the file names its (registered) normaliser.
    bare, _ = load_snapshot(derivable)
    assert bare.get("PERSON.1@EXAMPLE.COM") == users(4).get("person.1@example.com")

    # An unregistered normaliser cannot be found again: the keys are stored.
    custom = tmp_path / "custom.parquet"
    table = LookupTable("t", "email", ["email"], normalise_key=lambda k: k.upper())
    table.upsert("a@b.c", {"email": "a@b.c"})
    save_snapshot(table, {}, custom, normalise_key=lambda k: k.upper())
    assert KEY in pq.read_schema(custom).names
    assert sorted(load_snapshot(custom)[0]) == ["A@B.C"]

    # The record key differs from the value's key column: the key must be kept.
    table = CSDR_ASSIGNMENTS.new_table()
    table.upsert("org-1", {"org_id": "ORG-ONE", "csdr_email": "a@x.io"})
    other = tmp_path / "other.parquet"
    save_snapshot(table, {0: 1}, other)
    assert KEY in pq.read_schema(other).names
    loaded, _ = load_snapshot(other, CSDR_ASSIGNMENTS)
    assert loaded.get("org-1")["org_id"] == "ORG-ONE"  # type: ignore[index]
    assert loaded.get("ORG-ONE") is None


def test_empty_table_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    save_snapshot(SLACK_USERS.new_table(), {0: 0}, path)
    loaded, offsets = load_snapshot(path, SLACK_USERS)
    assert len(loaded) == 0 and offsets == {0: 0}

    missing = tmp_path / "nothing-here.parquet"
    table, offsets = load_snapshot(missing, SLACK_USERS)
    assert len(table) == 0 and offsets == {} and table.columns == SLACK_USERS.columns
    assert read_snapshot_info(missing) is None
    with pytest.raises(FileNotFoundError):
        load_snapshot(missing)


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    save_snapshot(users(3), {0: 3}, path)
    save_snapshot(users(5), {0: 5}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    table, offsets = load_snapshot(path, SLACK_USERS)
    assert len(table) == 5 and offsets == {0: 5}


def test_failed_save_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    save_snapshot(users(3), {0: 3}, path)
    broken = users(1)
    broken.upsert("x@y.z", {"email": "x@y.z", "slack_user_id": 5, "name": "mixed types"})
    with pytest.raises(SnapshotError, match="slack_user_id"):
        save_snapshot(broken, {0: 4}, path)
    table, offsets = load_snapshot(path, SLACK_USERS)
    assert len(table) == 3 and offsets == {0: 3}
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_unusable_files_raise_snapshot_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SnapshotError):
        load_snapshot(corrupt, SLACK_USERS)
    with pytest.raises(SnapshotError):
        read_snapshot_info(corrupt)

    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(_saved(tmp_path)).replace_schema_metadata({}), plain)
    with pytest.raises(SnapshotError, match="not an alert-platform snapshot"):
        load_snapshot(plain)

    # A snapshot of another table (or of older columns) does not pass for this spec.
    with pytest.raises(SnapshotError, match="does not match"):
        load_snapshot(_saved(tmp_path), CSDR_ASSIGNMENTS)


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "users.parquet"
    if not path.exists():
        save_snapshot(users(2), {0: 2}, path)
    return path


def test_spec_value_parser() -> None:
    row = SLACK_USERS.parse_value(b'{"email": "A@b.c", "slack_user_id": "U1", "extra": 1}')
    assert row == {"email": "A@b.c", "slack_user_id": "U1", "name": None}
    assert CSDR_ASSIGNMENTS.parse_value(b'{"org_id": 42, "csdr_name": {"a": 1}}') == {
        "org_id": "42",
        "csdr_email": None,
        "csdr_name": '{"a":1}',
        "account_name": None,
    }
    for bad in (b"{", b"[]", b'"text"', b"\xff"):
        with pytest.raises(MalformedValue):
            SLACK_USERS.parse_value(bad)
    already = "ann@x.io"
    assert lower(already) is already and lower("Ann@X.io") == "ann@x.io"
