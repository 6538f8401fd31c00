"""Server logs: one line per event, its fields appended as ``key=value``.

Events carry their fields as ``extra`` (``log.info("token issued", extra={"jti": ...})``).
Values that are not plain tokens are JSON-quoted, so a client-supplied string (an ``aud`` in a
rejection's detail, say) can never forge a line break or a field. Nothing secret is ever logged:
no assertion, token or key (docs/security.md).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import re
import time
from typing import Any

import uvicorn.config

__all__ = ["KeyValueFormatter", "lean_records", "log_config"]

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_FIRST_EXTRA = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_PLAIN = re.compile(r"[\w.:/@+-]{1,200}")


def _value(value: object) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """The standard format, then the record's extra fields as ``key=value``.

    The date is formatted once per second, not once per line: ``strftime`` was a third of the
    cost of the line every grant writes (docs/benchmarks.md)."""

    _second = -1
    _second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # ``extra`` fields follow the attributes LogRecord sets itself (Logger.makeRecord
        # adds them after __init__), so only the tail of the record's dict is looked at.
        fields = [
            f"{key}={_value(value)}"
            for key, value in itertools.islice(vars(record).items(), _FIRST_EXTRA, None)
            if key not in _RECORD_FIELDS and value is not None
        ]
        return f"{line} {' '.join(fields)}" if fields else line


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus the ``fhirgate`` loggers at ``level``."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["fhirgate"] = {
        "()": KeyValueFormatter,
        "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    }
    config["handlers"]["fhirgate"] = {
        "class": "logging.StreamHandler",
        "formatter": "fhirgate",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["fhirgate"] = {"handlers": ["fhirgate"], "level": level, "propagate": False}
    return config


def lean_records() -> None:
    """Stop collecting what fhirgate's lines never show: the caller's source location (a stack
    walk per record), thread and process names. The documented knobs of the logging HOWTO's
    "Optimization" section; they cut the cost of the one line every grant writes."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
