"""Logging: one structured stream on stderr, console or JSON, for tokenwire and the libraries.

tokenwire logs through structlog. uvicorn and other libraries log through the
standard library; their records are rendered by the same processors, so that a
JSON log stays one JSON object per line whoever wrote it. llama.cpp's own lines
are routed here by the local provider.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

from tokenwire.settings import LoggingSettings

# uvicorn's lines quote request targets, and a browser's credential may be in one.
_ACCESS_TOKEN = re.compile(r"(access_token=)[^&\s\"']*")


def mask_access_tokens(record: logging.LogRecord) -> bool:
    """Mask `access_token` query parameters in a library's log record (never drops it)."""
    message = record.getMessage()
    if "access_token=" in message:
        record.msg, record.args = _ACCESS_TOKEN.sub(r"\1***", message), None
    return True


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(settings: LoggingSettings) -> None:
    level = _LEVELS[settings.level]
    as_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(mask_access_tokens)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries' records at warning and above; uvicorn's per-connection chatter stays out.
    root.setLevel(max(level, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
