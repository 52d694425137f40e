"""Declarative enrichment pipelines and the batch engine that runs them."""
