"""Secrets never reach the logs, whatever a library puts in a message."""

from __future__ import annotations

import logging

import pytest

from core.logs import JsonFormatter, ScrubbingFilter, scrub

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connecting to postgresql://app:s3cr3t@db:5432/x failed", "s3cr3t"),
        ("dsn host=db user=app password=s3cr3t dbname=x", "s3cr3t"),
        ("dsn host=db password='s3 cr3t' dbname=x", "s3 cr3t"),
        ("sasl.password=s3cr3t", "s3cr3t"),
        ("basic.auth.user.info: user:s3cr3t", "s3cr3t"),
    ],
)
def test_scrub_masks_credentials(text: str, secret: str) -> None:
    cleaned = scrub(text)
    assert secret not in cleaned
    assert "**********" in cleaned


def test_scrub_keeps_ordinary_text() -> None:
    assert scrub("applied 10 rows to public.orders") == "applied 10 rows to public.orders"


def test_filter_scrubs_messages_args_and_tracebacks() -> None:
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "cannot connect to %s", ("postgresql://u:pw1@h/db",), None
    )
    try:
        raise RuntimeError("password=pw2 rejected")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert ScrubbingFilter().filter(record)
    rendered = JsonFormatter().format(record)
    assert "pw1" not in rendered
    assert "pw2" not in rendered
    assert "**********" in rendered


def test_repeat_filter_holds_back_alike_warnings_and_counts_them() -> None:
    from core.logs import RepeatFilter

    gate = RepeatFilter(window_s=3600)

    def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", level, __file__, 1, message, None, None)

    assert gate.filter(record("Connect to 127.0.0.1:1 failed (after 0ms)"))
    assert not gate.filter(record("Connect to 127.0.0.1:1 failed (after 3ms)"))
    assert gate.filter(record("a different failure"))
    assert gate.filter(record("progress 1", logging.INFO))
    assert gate.filter(record("progress 1", logging.INFO))
    gate._window_s = 0
    again = record("Connect to 127.0.0.1:1 failed (after 9ms)")
    assert gate.filter(again)
    assert again.getMessage().endswith("(1 alike messages held back)")


def test_records_go_to_the_current_stderr_even_after_the_old_one_was_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import sys

    from core.logs import configure

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure("INFO")
    try:
        logging.getLogger("connector.test").warning("one")
        first.close()  # a runner swapped its capture out and closed it
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("connector.test").warning("two")
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
    assert "two" in second.getvalue() and "Logging error" not in second.getvalue()
