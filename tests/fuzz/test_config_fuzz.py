"""Bad config files and env values: loading gives settings or a ConfigError naming the key
or env var (or, for a file that is not JSON at all, where it broke), never another
exception; a running daemon fed bad edits keeps its last good config and answers; a
daemon started with a bad env value exits 2 naming it, without a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from selfheal.config import LoadedConfig, load_config
from selfheal.config.leaves import LEAVES
from selfheal.control.protocol import encode_reply
from selfheal.core.text import unwritable_text
from selfheal.errors import ConfigError
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.fuzz import Cases, fuzz_settings, json_scalars, json_values, odd_text

ENV_VARS: Final = sorted({var for leaf in LEAVES for var in leaf.env_vars})
# What a problem about the file's content names: one of our sections, or a key in them.
KEY_WORDS: Final = ("selfheal", "selfHealing", "backupFailureRouter", "backupTransport")
# Problems with the file as a whole say where it broke instead.
FILE_PROBLEMS: Final = (
    "invalid JSON",
    "the file is not UTF-8 text",
    "the top level must be a JSON object",
)

# -- documents -----------------------------------------------------------------------------

ODD_TEXT = odd_text(
    20,
    *("NaN", "Infinity", "-Infinity", "nan", "1e400", "\ud800", "\u00e9", "~"),
    *("~/x", "./x", "../x", "/x", "embedded", "redis://h:1", "unix:///x", "-p 22"),
    "0 3 * * *",
)
SCALARS = json_scalars(ODD_TEXT, 0, -1, 2**63, 10**30, 1.5, -0.0, 1e308)
ANY_JSON = json_values(SCALARS, ODD_TEXT, max_size=3, max_leaves=10)
# Every real key path, in its own section and in the original's compat sections.
PATHS: Final = (
    [("selfheal", *leaf.aliases) for leaf in LEAVES if leaf.key.startswith("selfheal.")]
    + [("backupFailureRouter", leaf.aliases[-1]) for leaf in LEAVES if leaf.aliases[0] == "router"]
    + [("backupTransport", leaf.aliases[-1]) for leaf in LEAVES if leaf.aliases[0] == "transport"]
    + [
        ("selfHealing", *leaf.aliases)
        for leaf in LEAVES
        if leaf.aliases[0] in ("router", "transport")
    ]
)


def _build(chosen: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in chosen:
        node = root
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = value
    return root


# Real key paths (and a few near misses) with values of any type.
SHAPED = st.lists(
    st.tuples(
        st.sampled_from(PATHS)
        | st.sampled_from(PATHS).map(lambda p: (*p[:-1], p[-1].lower()))
        | st.sampled_from(PATHS).map(lambda p: (*p[:-1], p[-1] + "s")),
        ANY_JSON,
    ),
    max_size=8,
).map(_build)
DOCUMENTS = (
    SHAPED
    | ANY_JSON
    | st.dictionaries(st.sampled_from([*KEY_WORDS, "other"]), ANY_JSON, max_size=4)
)


def _raw_with_duplicate(doc: dict[str, Any], key: str) -> bytes:
    """The document's JSON with `key` written twice in its top object."""
    body = json.dumps(doc)[1:-1]
    extra = f"{json.dumps(key)}: 1, {json.dumps(key)}: 2"
    return ("{" + (body + ", " if body else "") + extra + "}").encode()


@st.composite
def raw_files(draw: st.DrawFn) -> bytes:
    """A config file's bytes: JSON of our shape or any, then maybe broken on purpose."""
    doc = draw(DOCUMENTS)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    raw = text.encode("utf-8", "surrogatepass")
    how = draw(st.integers(0, 9))
    if how == 0 and isinstance(doc, dict):
        raw = _raw_with_duplicate(doc, draw(st.sampled_from([*KEY_WORDS, "x"])))
    elif how == 1:  # bytes spliced in anywhere (non-UTF-8 among them)
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    elif how == 2:  # cut short
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == 3:  # numbers JSON parsers disagree on, as literal text
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "9" * 5000]))
        raw = b'{"backupFailureRouter": {"maxRetries": ' + literal.encode() + b"}}"
    elif how == 4:  # deep nesting
        depth = draw(st.integers(1, 100_000))
        raw = b'{"selfheal": ' + b"[" * depth + b"]" * draw(st.sampled_from([0, depth])) + b"}"
    elif how == 5:  # a BOM, comments, trailing commas
        raw = draw(st.sampled_from([b"\xef\xbb\xbf", b"// c\n", b""])) + raw
        raw += draw(st.sampled_from([b"", b",", b"\n/* c */", b"\x00"]))
    elif how == 6:
        raw = draw(st.binary(max_size=200))
    return raw


ENV_VALUES = st.text(max_size=12) | st.sampled_from(
    [
        *("1", "0", "yes", "off", " 1", "1 ", "12", "-1", "+1", "1_000", "0x10", "1e3", "2.5"),
        *("inf", "nan", "\u0663", "9" * 5000, "TRUE ", "/abs", "./rel", "~/x", "a" * 5000),
        "redis://:pw@h:1/0",
        *("\udcff", "caf\udce9"),  # what os.environ holds for bytes that are not UTF-8
    ]
)
ENVS = st.dictionaries(st.sampled_from(ENV_VARS), ENV_VALUES, max_size=3)


def load(raw: bytes, env: dict[str, str], folder: Path) -> LoadedConfig | ConfigError:
    path = folder / "c.json"
    path.write_bytes(raw)
    try:
        return load_config(path, {"HOME": str(folder), **env})
    except ConfigError as exc:
        return exc


def check_outcome(outcome: LoadedConfig | ConfigError, env: dict[str, str]) -> None:
    """Settings whose every value can be shown, or problems that each name their key."""
    if isinstance(outcome, LoadedConfig):
        # `config show` and `status` must be able to answer with it.
        shown = outcome.public_dict()
        assert unwritable_text(shown) is None, shown
        encode_reply(shown)
        return
    assert outcome.problems, outcome
    str(outcome).encode("utf-8")  # a terminal or a log takes it
    for problem in outcome.problems:
        assert isinstance(problem, str) and problem.strip(), outcome.problems
        named = any(word in problem for word in (*KEY_WORDS, "router.", "transport.", *env))
        assert named or problem.startswith(FILE_PROBLEMS), problem


@given(raw=raw_files(), env=ENVS)
@fuzz_settings(3000)
def test_any_file_and_env_give_settings_or_a_config_error_naming_the_key(
    cases: Cases, raw: bytes, env: dict[str, str]
) -> None:
    cases.tried()
    with tempfile.TemporaryDirectory() as folder:
        outcome = load(raw, env, Path(folder))
        check_outcome(outcome, env)
        if isinstance(outcome, LoadedConfig):
            again = load(raw, env, Path(folder))
            assert isinstance(again, LoadedConfig) and again.digest == outcome.digest


# -- a running daemon fed bad edits ----------------------------------------------------------

GOOD: Final = {"otherProgram": {"keep": True}, "backupFailureRouter": {"maxRetries": 5}}


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    home = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    daemons = Daemons(home)
    try:
        yield daemons.start(config=GOOD)
    finally:
        daemons.kill_all()
        shutil.rmtree(home, ignore_errors=True)


def write_raw(daemon: DaemonProcess, raw: bytes) -> None:
    """Atomically, like an editor's save."""
    tmp = daemon.config_path.with_name(".config.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, daemon.config_path)


@pytest.mark.slow
@given(raw=raw_files())
@fuzz_settings(300)
def test_a_daemon_fed_bad_edits_keeps_its_last_good_config(
    daemon: DaemonProcess, cases: Cases, raw: bytes
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        # Only edits the loader refuses (a valid one would change the daemon's config).
        refused = load(raw, {}, Path(folder))
    assume(isinstance(refused, ConfigError))
    cases.tried()
    good = daemon.status()["config"]["digest"]
    write_raw(daemon, raw)
    result = daemon.call("config.reload")
    assert result["ok"] is False and result["error"], result
    assert "invalid config" in result["error"] or "cannot read" in result["error"], result
    status = daemon.status()
    assert status["state"] == "running"
    assert status["config"]["digest"] == good, "the last good config is kept"
    assert status["last_reload"]["ok"] is False
    shown = daemon.call("config.show", {"effective": False})
    assert {item["key"]: item["value"] for item in shown["items"]}["router.maxRetries"] == 5


# -- a daemon started with a bad env value ---------------------------------------------------


@pytest.mark.slow
@given(env=ENVS.filter(lambda env: bool(env) and "\x00" not in "".join(env.values())))
@fuzz_settings(6)
def test_a_daemon_started_with_a_bad_env_value_exits_2_naming_it(
    cases: Cases, env: dict[str, str]
) -> None:
    home = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    try:
        outcome = load(json.dumps(GOOD).encode(), env, home)
        assume(isinstance(outcome, ConfigError))
        cases.tried()
        process = DaemonProcess(home, config=GOOD, env=env)
        run_env = {
            key: value.encode("utf-8", "surrogateescape") for key, value in process.env().items()
        }
        done = subprocess.run(
            [sys.executable, "-m", "selfheal", "run"],
            env={key.encode(): value for key, value in run_env.items()},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            cwd=home,
        )
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        assert done.returncode == 2, output
        assert "Traceback" not in output, output
        assert any(var in output for var in env), output
    finally:
        shutil.rmtree(home, ignore_errors=True)
