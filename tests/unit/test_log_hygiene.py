"""Library log lines never carry a browser's `access_token`."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from tokenwire.logs import configure_logging, mask_access_tokens
from tokenwire.settings import LoggingSettings


def test_a_token_in_a_formatted_record_is_masked() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.WARNING,
        __file__,
        1,
        '%s - "WebSocket %s" 403',
        ("127.0.0.1:5000", "/ws/ai-stream?x=1&access_token=eyJ.a-b_c"),
        None,
    )
    assert mask_access_tokens(record)
    assert record.getMessage() == (
        '127.0.0.1:5000 - "WebSocket /ws/ai-stream?x=1&access_token=***" 403'
    )


def test_a_record_without_a_token_is_untouched() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%d%%", (5,), None)
    assert mask_access_tokens(record)
    assert (record.msg, record.args) == ("%d%%", (5,))


@pytest.fixture
def configured_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The process's logging as `tokenwire serve` sets it, onto a private stderr,
    undone afterwards (so that no later test logs into a closed stream)."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(LoggingSettings(format="json"))
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def test_the_configured_handler_masks_what_libraries_log(configured_stderr: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("GET /api/streams?access_token=secret-value&a=b")
    err = configured_stderr.getvalue()
    assert "access_token=***&a=b" in err
    assert "secret-value" not in err
