"""Logging setup: every line the process logs is redacted, whichever library logs it.

Redaction happens where log records are made (the record factory), not in one
handler's formatter: a library that adds a handler of its own (redis-py does, for
push responses), a logger that does not propagate (it ends in logging.lastResort)
or a third-party formatter all get the already-redacted message and traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, TextIO

from selfheal.redact import quick_redact_text

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMAT_ENV: Final = "SELFHEAL_LOG_FORMAT"
LOG_FORMATS: Final = ("text", "json")


class OneLineFormatter(logging.Formatter):
    """LOG_FORMAT with a record's line breaks (a traceback's too) written as \\n, so
    each record is one line for launchd's and journald's log files."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO 8601, UTC), level, logger, message, and
    exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # The record factory has already rendered (and redacted) any traceback here.
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


_handler: logging.Handler | None = None


def use_log_format(kind: str) -> None:
    """Switch the installed handler to `kind` (text or json)."""
    if kind not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {kind!r}")
    if _handler is not None:
        _handler.setFormatter(JsonFormatter() if kind == "json" else OneLineFormatter())


LOG_LEVEL_ENV: Final = "SELFHEAL_LOG_LEVEL"
HTTP_LOG_LEVEL_ENV: Final = "SELFHEAL_HTTP_LOG_LEVEL"
# httpx logs every request's full URL at INFO (a Telegram bot token is in the path, a
# webhook's token in its query) and httpcore each connection step at DEBUG: noise at
# best, so they log warnings only unless SELFHEAL_HTTP_LOG_LEVEL says otherwise.
HTTP_LOGGERS: Final = ("httpx", "httpcore")

_RecordFactory = Callable[..., logging.LogRecord]


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Replace the record's message, traceback and stack by their redacted text."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging would print msg and args raw
        message = f"unformattable log message {record.msg!r} with arguments {record.args!r}"
    record.msg, record.args = quick_redact_text(message), ()
    if record.exc_info and record.exc_info[0] is not None:
        # Formatter.format prints exc_text when set; without exc_info no handler can
        # render the raw traceback again.
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = quick_redact_text(text)
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = quick_redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = quick_redact_text(record.stack_info)
    return record


class _RedactingFactory:
    """The record factory in force before, its records redacted."""

    def __init__(self, make: _RecordFactory) -> None:
        self._make = make

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(self._make(*args, **kwargs))


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("selfheal").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("selfheal").error(
        "uncaught exception in thread %s",
        thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def setup_logging(env: Mapping[str, str], stream: TextIO | None = None) -> logging.Handler:
    """Log to `stream` (stderr) at SELFHEAL_LOG_LEVEL (INFO), every record redacted.

    Warnings and uncaught exceptions are logged too, so they pass the same redaction.
    Returns the handler installed on the root logger.
    """
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
    global _handler
    handler = logging.StreamHandler(stream)
    _handler = handler
    problems: list[str] = []
    kind = _setting(env, LOG_FORMAT_ENV, LOG_FORMATS, "text", problems)
    handler.setFormatter(JsonFormatter() if kind == "json" else OneLineFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(_setting(env, LOG_LEVEL_ENV, LEVELS, "INFO", problems))
    http_level = _setting(env, HTTP_LOG_LEVEL_ENV, LEVELS, "WARNING", problems)
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(http_level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    for problem in problems:
        logging.getLogger("selfheal").warning("%s", problem)
    return handler


LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _setting(
    env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str, problems: list[str]
) -> str:
    """The env var's value if it is one of `allowed` (any case), else `default`, with
    the problem noted: a typo in a logging variable must not stop the daemon."""
    raw = env.get(name)
    if not raw:
        return default
    for choice in allowed:
        if raw.strip().lower() == choice.lower():
            return choice
    problems.append(f"{name}={raw!r} is not one of {', '.join(allowed)}; using {default}")
    return default
