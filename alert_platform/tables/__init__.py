"""Lookup tables: columnar rows keyed for joins, snapshots, catch-up from compacted topics."""
