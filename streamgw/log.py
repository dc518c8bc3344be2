"""Logging set-up for the command line."""

from __future__ import annotations

import logging


def configure(level: str) -> None:
    """Log to stderr at ``level`` with timestamps and logger names."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
