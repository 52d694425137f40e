"""Subcommands of the ``alert-platform`` console script beyond ``stack`` and ``topics``."""
