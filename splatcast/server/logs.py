"""Structured logs: one line per event, as text (``key=value``) or JSON (python-json-logger).

Code logs an event with ``event(logger, "name", key=value, ...)``; the fields travel as the
record's ``fields`` attribute (and as top-level keys in JSON). ``log_config`` is the logging
configuration ``splatcast serve`` hands to uvicorn, so uvicorn's own messages come out in the
same format. The events (``request``, ``subscriber``, ``frame``, ...) are listed in docs/API.md.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

LogFormat = Literal["text", "json"]


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (JSON-serialisable values)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"event": name, "fields": fields, **fields})


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def log_config(level: str = "info", fmt: LogFormat = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the splatcast and uvicorn loggers (to stderr).

    uvicorn's access log is left out: the ``request`` event of ``splatcast.server`` replaces it.
    """
    formatter: dict[str, Any] = (
        {"()": "pythonjsonlogger.json.JsonFormatter", "reserved_attrs": [*_RESERVED, "fields"],
         "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
         "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}
        if fmt == "json" else {"()": TextFormatter})
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
               for name in ("splatcast", "uvicorn", "uvicorn.error")}
    loggers["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"default": formatter},
            "handlers": {"default": handler}, "loggers": loggers}


_RESERVED = ["args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelname",
             "levelno", "lineno", "module", "msecs", "message", "msg", "name", "pathname", "process",
             "processName", "relativeCreated", "stack_info", "thread", "threadName", "taskName"]
