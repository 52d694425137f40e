"""Names of the warehouse tables the platform reads (importable without the BigQuery client)."""

ACCOUNTS_TABLE = "accounts"
