"""The official BigQuery client, pointed at the local emulator or at Google.

``BIGQUERY_API_ENDPOINT`` set (the local profile's ``http://127.0.0.1:9050``): anonymous
credentials against that endpoint. Empty (the default): Application Default Credentials against
Google.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from alert_platform.settings import ConfigError, Settings

# Python type -> BigQuery parameter type (bool before int: bool is an int subclass).
_PARAM_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT64"),
    (Decimal, "NUMERIC"),
    (datetime, "TIMESTAMP"),
    (date, "DATE"),
    (bytes, "BYTES"),
    (str, "STRING"),
)


def make_bigquery_client(settings: Settings) -> bigquery.Client:
    """A ``google.cloud.bigquery.Client`` for ``settings.bigquery_project`` (required)."""
    if not settings.bigquery_project:
        raise ConfigError("BIGQUERY_PROJECT is empty: set it to the project of the warehouse")
    if settings.bigquery_api_endpoint:
        return bigquery.Client(
            project=settings.bigquery_project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=settings.bigquery_api_endpoint),
        )
    return bigquery.Client(project=settings.bigquery_project)


def _param_type(value: Any) -> str:
    for python_type, bq_type in _PARAM_TYPES:
        if isinstance(value, python_type):
            return bq_type
    raise TypeError(f"cannot infer a BigQuery parameter type for {type(value).__name__}")


def query_parameter(
    name: str, value: Any
) -> bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter:
    """A named query parameter with the type inferred from ``value``.

    Lists/tuples become ARRAY parameters (typed from their first element; an empty one is an
    ARRAY<STRING>). Pass a ready-made ``bigquery.*QueryParameter`` to choose the type yourself.
    """
    if isinstance(value, (list, tuple)):
        element_type = _param_type(value[0]) if value else "STRING"
        return bigquery.ArrayQueryParameter(name, element_type, list(value))
    if value is None:
        return bigquery.ScalarQueryParameter(name, "STRING", None)
    return bigquery.ScalarQueryParameter(name, _param_type(value), value)


def query_to_dataframe(
    client: bigquery.Client,
    sql: str,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    timeout: float | None = 120.0,
) -> pd.DataFrame:
    """Run ``sql`` with named parameters (``@name``) and return the result as a DataFrame.

    ``params``: a mapping name -> value (types inferred, see :func:`query_parameter`) or a
    sequence of ready-made ``bigquery.*QueryParameter``. Reads the result over REST
    (``create_bqstorage_client=False``): the emulator has no Storage Read API, and for the
    result sizes here the REST path is fast enough on real BigQuery too.
    """
    if params is None:
        query_params: list[Any] = []
    elif isinstance(params, Mapping):
        query_params = [query_parameter(name, value) for name, value in params.items()]
    else:
        query_params = list(params)
    job_config = bigquery.QueryJobConfig(query_parameters=query_params)
    job = client.query(sql, job_config=job_config, timeout=timeout)
    rows = job.result(timeout=timeout)
    with warnings.catch_warnings():
        # google-cloud-bigquery 3.3x nudges towards pandas-gbq; the REST path is what we want.
        warnings.filterwarnings("ignore", "Retrieving DataFrames", PendingDeprecationWarning)
        return rows.to_dataframe(create_bqstorage_client=False)
