"""Logging set-up for the command line."""

from __future__ import annotations

import logging

# Libraries whose INFO lines are routine detail for us: aioice logs ~14 per WebRTC session
# (every candidate pair check state change).
CHATTY = ("aioice",)


class DemoteInfo(logging.Filter):
    """A handler filter that logs the INFO records of ``loggers`` (and their children) as DEBUG.

    ``level`` is the configured level: a demoted record passes only when it allows DEBUG.
    """

    def __init__(self, level: int, loggers: tuple[str, ...] = CHATTY) -> None:
        super().__init__()
        self.threshold = level
        self.loggers = loggers

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote a chatty library's INFO record; drop it below the configured level."""
        if record.levelno != logging.INFO or not any(
                record.name == name or record.name.startswith(name + ".") for name in self.loggers):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return self.threshold <= logging.DEBUG


def configure(level: str) -> None:
    """Log to stderr at ``level`` with timestamps and logger names."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    root = logging.getLogger()
    # httpx logs every request at INFO: one line per segment upload and rendition download.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    for handler in root.handlers:
        if not any(isinstance(f, DemoteInfo) for f in handler.filters):
            handler.addFilter(DemoteInfo(root.level))
