"""The flow fixtures of the integration tests (a private broker, the session Slack sandbox, the
environment the definitions read, a test Dagster instance), for the fault scenarios too."""

from tests.integration.conftest import (  # noqa: F401  (fixtures, registered by import)
    flow_options,
    flow_settings,
    instance,
    platform_env,
    sandbox,
)
