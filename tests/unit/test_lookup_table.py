"""LookupTable: columnar rows, key index, tombstones, snapshots as columns."""

from __future__ import annotations

import random

import pytest

from alert_platform.tables.lookup import KEY, LookupTable

USERS = [
    {"email": "Jane.Doe@Example.com", "slack_user_id": "U1", "name": "Jane"},
    {"email": "bob@example.com", "slack_user_id": "U2", "name": "Bob"},
]


def users() -> LookupTable:
    return LookupTable.from_rows("slack_users", "email", USERS, normalise_key=str.lower)


def test_get_returns_row_or_none() -> None:
    table = users()
    assert table.get("bob@example.com") == USERS[1]
    assert table.get("nobody@example.com") is None
    assert len(table) == 2
    assert table.columns == ("email", "slack_user_id", "name")


def test_normalised_keys_are_case_insensitive() -> None:
    table = users()
    assert table.get("jane.doe@example.com") == USERS[0]  # row keeps its original case
    assert table.get("JANE.DOE@EXAMPLE.COM") == USERS[0]
    assert "JANE.doe@example.com" in table
    assert list(table) == ["jane.doe@example.com", "bob@example.com"]


def test_without_normalisation_keys_are_exact() -> None:
    table = LookupTable.from_rows("t", "email", USERS)
    assert table.get("Jane.Doe@Example.com") == USERS[0]
    assert table.get("jane.doe@example.com") is None


def test_get_builds_a_fresh_dict() -> None:
    table = users()
    row = table.get("bob@example.com")
    assert row is not None
    row["name"] = "mutated"
    assert table.get("bob@example.com") == USERS[1]


def test_upsert_replaces_and_fixes_columns() -> None:
    table = users()
    table.upsert("BOB@example.com", {"email": "bob@example.com", "slack_user_id": "U9", "x": 1})
    assert table.get("bob@example.com") == {
        "email": "bob@example.com",
        "slack_user_id": "U9",
        "name": None,  # missing column -> None; extra field "x" ignored
    }
    assert len(table) == 2


def test_delete_is_a_tombstone() -> None:
    table = users()
    assert table.delete("JANE.DOE@example.com") is True
    assert table.get("jane.doe@example.com") is None
    assert table.get("bob@example.com") == USERS[1]  # moved into the hole, still found
    assert table.delete("jane.doe@example.com") is False
    assert len(table) == 1


def test_apply_upserts_and_tombstones_in_order() -> None:
    table = users()
    table.apply(
        [
            ("carol@example.com", {"email": "carol@example.com", "slack_user_id": "U3"}),
            ("bob@example.com", None),
            ("carol@example.com", None),
            ("carol@example.com", {"email": "carol@example.com", "slack_user_id": "U4"}),
        ]
    )
    assert table.get("bob@example.com") is None
    assert table.get("carol@example.com")["slack_user_id"] == "U4"  # type: ignore[index]
    assert len(table) == 2


def test_random_operations_match_a_dict_model() -> None:
    rng = random.Random(7)
    table = LookupTable("t", "k", ["k", "v"])
    model: dict[str, dict[str, object]] = {}
    for step in range(5000):
        key = f"k{rng.randrange(60)}"
        if rng.random() < 0.35:
            assert table.delete(key) == (key in model)
            model.pop(key, None)
        else:
            row = {"k": key, "v": step}
            table.upsert(key, row)
            model[key] = row
        if step % 250 == 0:
            assert len(table) == len(model)
            assert {k: table.get(k) for k in model} == model
    assert sorted(table) == sorted(model)
    assert dict(table.items()) == model


def test_rows_are_stored_as_columns() -> None:
    table = users()
    columns = table.to_columns()
    assert columns == {
        KEY: ["jane.doe@example.com", "bob@example.com"],
        "email": ["Jane.Doe@Example.com", "bob@example.com"],
        "slack_user_id": ["U1", "U2"],
        "name": ["Jane", "Bob"],
    }
    columns["name"][0] = "changed"  # a copy: the table is unaffected
    assert table.get("jane.doe@example.com") == USERS[0]


def test_columns_round_trip() -> None:
    table = users()
    table.upsert("other-key", {"email": "x@example.com", "slack_user_id": "U5", "name": "X"})
    again = LookupTable.from_columns(
        "slack_users", "email", table.to_columns(), normalise_key=str.lower
    )
    assert dict(again.items()) == dict(table.items())
    assert again.get("OTHER-KEY") == {"email": "x@example.com", "slack_user_id": "U5", "name": "X"}


def test_from_columns_without_keys_derives_them() -> None:
    table = LookupTable.from_columns(
        "slack_users",
        "email",
        {"email": ["A@x.com", "b@x.com", "a@X.com"], "slack_user_id": ["U1", "U2", "U3"]},
        normalise_key=str.lower,
    )
    assert len(table) == 2  # duplicate key: the last row wins
    assert table.get("a@x.com") == {"email": "a@X.com", "slack_user_id": "U3"}
    assert table.get("B@X.COM") == {"email": "b@x.com", "slack_user_id": "U2"}


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"v": [1]}, "key column"),
        ({"k": ["a", "b"], "v": [1]}, "differ in length"),
        ({"k": ["a", None], "v": [1, 2]}, "non-null"),
    ],
)
def test_from_columns_rejects_bad_input(columns: dict[str, list[object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LookupTable.from_columns("t", "k", columns)


def test_from_columns_rejects_null_keys_when_normalising() -> None:
    with pytest.raises(ValueError, match="non-null"):
        LookupTable.from_columns("t", "k", {"k": ["a", None]}, normalise_key=str.lower)


def test_from_rows_skips_rows_without_key() -> None:
    table = LookupTable.from_rows(
        "t", "k", [{"k": "a", "v": 1}, {"k": None, "v": 2}, {"v": 3}, {"k": "", "v": 4}]
    )
    assert len(table) == 1


def test_empty_table() -> None:
    table = LookupTable.from_rows("t", "k", [])
    assert len(table) == 0
    assert table.get("x") is None
    assert table.to_columns() == {KEY: [], "k": []}


def test_key_column_is_added_and_names_checked() -> None:
    assert LookupTable("t", "k", ["v"]).columns == ("k", "v")
    with pytest.raises(ValueError):
        LookupTable("t", "k", ["k", "k"])
    with pytest.raises(ValueError):
        LookupTable("t", "k", ["k", KEY])


def test_large_table_from_columns() -> None:
    n = 200_000
    table = LookupTable.from_columns(
        "csdr_assignments",
        "org_id",
        {"org_id": [f"org-{i}" for i in range(n)], "csdr_email": [f"u{i}@x.com" for i in range(n)]},
    )
    assert len(table) == n
    assert table.get("org-123456") == {"org_id": "org-123456", "csdr_email": "u123456@x.com"}
