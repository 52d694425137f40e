"""The benchmark suite behind ``python -m bench`` (see ``bench/suite/cli.py``)."""
