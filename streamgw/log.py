"""Logging set-up for the command line."""

from __future__ import annotations

import logging


def configure(level: str) -> None:
    """Log to stderr at ``level`` with timestamps and logger names."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: one line per segment upload and rendition download.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
