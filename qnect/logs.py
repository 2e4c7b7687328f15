"""structlog setup: JSON lines in production, readable console output on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog


class LineLogger:
    """Writes each event as one line with a single ``write(2)``.

    ``print`` (structlog's PrintLogger) writes the message and the newline separately, so the
    bridge's worker processes, which share one stderr, could splice two events into one line.
    A single write of the whole line keeps lines whole (up to the pipe's atomic size, 4 KiB,
    far above our events).
    """

    def __init__(self, fd: int = 2) -> None:
        """Log to file descriptor *fd* (stderr)."""
        self._fd = fd

    def msg(self, message: str) -> None:
        """Write one line."""
        data = (message + "\n").encode()
        while data:
            data = data[os.write(self._fd, data) :]

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _line_logger(*_args: Any) -> LineLogger | structlog.PrintLogger:
    try:
        return LineLogger(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # stderr replaced by an in-memory stream
        return structlog.PrintLogger(sys.stderr)


def configure(level: str = "INFO") -> None:
    """Configure structlog once per process."""
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=_line_logger,
        cache_logger_on_first_use=True,
    )
