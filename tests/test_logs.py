"""Server log lines: fields as key=value, client-supplied text quoted so it cannot forge lines."""

from __future__ import annotations

import logging

from fhirgate.logs import KeyValueFormatter, lean_records, log_config


def _format(**extra: object) -> str:
    record = logging.LogRecord("fhirgate.token", logging.INFO, __file__, 1, "event", (), None)
    record.__dict__.update(extra)
    return KeyValueFormatter("%(name)s: %(message)s").format(record)


def test_fields_follow_the_message_as_key_value() -> None:
    line = _format(check="aud_mismatch", jti="abc-123")
    assert line == "fhirgate.token: event check=aud_mismatch jti=abc-123"


def test_client_text_is_quoted_and_cannot_break_the_line() -> None:
    line = _format(detail='aud "x"\nfhirgate.token: token issued client_id=forged')
    assert "\n" not in line
    assert line.endswith('detail="aud \\"x\\"\\nfhirgate.token: token issued client_id=forged"')


def test_none_fields_are_left_out() -> None:
    assert _format(detail=None) == "fhirgate.token: event"


def test_log_config_sends_fhirgate_events_at_the_configured_level() -> None:
    config = log_config("WARNING")
    assert config["loggers"]["fhirgate"]["level"] == "WARNING"
    assert config["loggers"]["fhirgate"]["handlers"] == ["fhirgate"]
    assert "uvicorn.error" in config["loggers"]  # uvicorn's own loggers are kept


def test_lean_records_keep_fhirgate_lines_whole() -> None:
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses)
    try:
        lean_records()
        record = logging.getLogger("fhirgate.token").makeRecord(
            "fhirgate.token", logging.INFO, "(unknown file)", 0, "token issued", (), None,
            extra={"client_id": "c1"},
        )  # fmt: skip
        assert record.threadName is None and record.process is None
        formatter = KeyValueFormatter("%(levelname)s %(name)s: %(message)s")
        assert formatter.format(record) == "INFO fhirgate.token: token issued client_id=c1"
    finally:
        logging._srcfile, logging.logThreads, logging.logProcesses = saved
