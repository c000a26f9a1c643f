"""Logging as `selfheal` sets it up: every way a line reaches stderr is redacted.

Each case runs in a fresh interpreter, as the daemon does: logging setup is
process-wide (record factory, root handler, excepthooks).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A shape no pattern knows: only the registered value can hide it.
SECRET = "Zz-webhook-sig-0451"
TOKEN = "123456789:AAH-example_token_for_tests_0123456789"

SCRIPT = textwrap.dedent(
    f"""
    import logging, os, threading, warnings
    from selfheal.logs import setup_logging
    from selfheal.redact import register_secrets

    S, T = {SECRET!r}, {TOKEN!r}
    register_secrets([S])
    setup_logging(os.environ)
    logging.getLogger("httpx").info("HTTP Request: POST https://api.telegram.org/bot%s/x", T)
    logging.getLogger("httpx").warning("HTTP Request: POST http://h/hook?sig=%s", S)
    logging.getLogger("httpcore.connection").debug("connect_tcp sig=%s", S)
    logging.getLogger("asyncssh").warning("auth failed for %s", S)
    logging.getLogger("redis.asyncio").error("redis://:%s@nas:6379/0 unreachable", S)
    logging.getLogger("opentelemetry.sdk").warning("export to http://c/?k=%s failed", S)

    # redis-py gives its push_response logger a handler of its own.
    own = logging.getLogger("push_response")
    own.addHandler(logging.StreamHandler())
    own.propagate = False
    own.warning("own handler %s", S)
    # A logger that does not propagate and has no handler ends in logging.lastResort.
    lone = logging.getLogger("lone")
    lone.propagate = False
    lone.warning("last resort %s", S)

    logging.getLogger("selfheal.x").info("format %s %s", S)  # too few arguments
    try:
        raise RuntimeError("boom " + S)
    except RuntimeError:
        logging.getLogger("selfheal.x").exception("handler failed")
    logging.getLogger("selfheal.x").warning("where %s", S, stack_info=True)
    warnings.warn("careful with " + S)
    thread = threading.Thread(target=lambda: int("thread " + S), name="worker-1")
    thread.start()
    thread.join()
    raise KeyError(S)
    """
)


def run(tmp_path: Path, **env: str) -> str:
    script = tmp_path / "log_everything.py"
    script.write_text(SCRIPT)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**base, "SELFHEAL_LOG_LEVEL": "DEBUG", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # the uncaught KeyError at the end
    return done.stdout + done.stderr


def test_every_line_is_redacted_whoever_writes_it(tmp_path: Path) -> None:
    out = run(tmp_path)
    assert SECRET not in out and TOKEN.split(":")[1] not in out
    for line in (
        "WARNING httpx: HTTP Request: POST http://h/hook?sig=***",
        "WARNING asyncssh: auth failed for ***",
        "ERROR redis.asyncio: redis://:***@nas:6379/0 unreachable",
        "WARNING opentelemetry.sdk: export to http://c/?k=*** failed",
        "own handler ***",
        "last resort ***",
        "unformattable log message 'format %s %s' with arguments ('***',)",
        "ERROR selfheal.x: handler failed",
        "RuntimeError: boom ***",
        "WARNING selfheal.x: where ***",
        "WARNING py.warnings:",
        "careful with ***",
        "ERROR selfheal: uncaught exception in thread worker-1",
        "ValueError: invalid literal for int() with base 10: 'thread ***'",
        "CRITICAL selfheal: uncaught exception",
        "KeyError: '***'",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    # The stack and tracebacks are there (redacted), not dropped.
    assert "Stack (most recent call last):" in out and "Traceback" in out
    # httpx and httpcore stay at WARNING: the INFO line with the bot URL is not written.
    assert "api.telegram.org" not in out and "connect_tcp" not in out


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_http_loggers_speak_when_asked_and_stay_redacted(tmp_path: Path, level: str) -> None:
    out = run(tmp_path, SELFHEAL_HTTP_LOG_LEVEL=level)
    assert "INFO httpx: HTTP Request: POST https://api.telegram.org/bot***/x" in out
    assert ("DEBUG httpcore.connection: connect_tcp sig=***" in out) == (level == "DEBUG")
    assert SECRET not in out and TOKEN.split(":")[1] not in out


FORMATS = textwrap.dedent(
    """
    import logging, os
    from selfheal.logs import setup_logging, use_log_format

    setup_logging(os.environ)
    log = logging.getLogger("selfheal.test")
    log.info("first\\nsecond")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    use_log_format("json")
    log.warning("as json")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    """
)


def test_each_record_is_one_line_in_text_and_in_json() -> None:
    env = {**os.environ, "SELFHEAL_LOG_LEVEL": "INFO"}
    env.pop("SELFHEAL_LOG_FORMAT", None)
    result = subprocess.run(
        [sys.executable, "-c", FORMATS], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 4, lines
    assert " INFO selfheal.test: first\\nsecond" in lines[0]
    assert "ERROR selfheal.test: failed\\nTraceback" in lines[1] and "ValueError: boom" in lines[1]
    import json

    warning, error = json.loads(lines[2]), json.loads(lines[3])
    assert warning["level"] == "WARNING" and warning["message"] == "as json"
    assert warning["logger"] == "selfheal.test" and warning["ts"].endswith("+00:00")
    assert error["message"] == "failed" and "ValueError: boom" in error["exception"]


def test_a_mistyped_logging_variable_is_named_and_the_default_used() -> None:
    env = {**os.environ, "SELFHEAL_LOG_LEVEL": "verbose", "SELFHEAL_LOG_FORMAT": "yaml"}
    env["SELFHEAL_HTTP_LOG_LEVEL"] = "debug"  # any case is fine
    script = (
        "import logging, os\n"
        "from selfheal.logs import setup_logging\n"
        "setup_logging(os.environ)\n"
        "logging.getLogger('selfheal.test').info('still logging')\n"
        "logging.getLogger('selfheal.test').debug('not at INFO')\n"
        "print(logging.getLogger('httpx').level)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "SELFHEAL_LOG_FORMAT='yaml' is not one of text, json; using text" in lines[0]
    assert "SELFHEAL_LOG_LEVEL='verbose' is not one of DEBUG" in lines[1]
    assert "using INFO" in lines[1] and lines[2].endswith("INFO selfheal.test: still logging")
    assert len(lines) == 3 and result.stdout.strip() == str(logging.DEBUG)
