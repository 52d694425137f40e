"""Every pipeline by name. A new pipeline is one spec module plus one line here."""

from __future__ import annotations

from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
from alert_platform.pipelines.onboarding import ONBOARDING
from alert_platform.pipelines.spec import PipelineSpec

PIPELINES: dict[str, PipelineSpec] = {spec.name: spec for spec in (CONNECTOR_FAILURE, ONBOARDING)}


def get_pipeline(name: str) -> PipelineSpec:
    """The spec called ``name``; a ``KeyError`` lists the known names."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; known: {sorted(PIPELINES)}") from None


def pipelines_for_topic(topic: str) -> list[PipelineSpec]:
    """The specs that read ``topic``."""
    return [spec for spec in PIPELINES.values() if spec.source_topic == topic]
