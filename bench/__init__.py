"""alert-platform's benchmarks: ``python -m bench`` (``make bench``) runs the whole suite.

The suite's modules live in ``bench/suite/``; the single-purpose scripts next to this file
(``bench_engine.py``, ``bench_enrichment.py``, ``bench_tables.py``, ``bench_delivery.py``) still
run on their own. Nothing is imported here: the Quix Streams contender imports ``bench.suite``
from an environment without alert-platform.
"""
