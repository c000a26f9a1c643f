"""Snapshot trees with odd names and odd entries, archived as the Typesense source does
and unpacked as the restore drill does. Archiving never follows a symlink out of the
tree nor blocks on a FIFO: it refuses such a tree naming the entry, and what it does
archive unpacks to the same tree. Unpacking refuses an archive whose members would
land outside the folder, and writes nothing outside it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

import anyio
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from selfheal.backup.drill import DrillResult, UnsafeArchive, drill, unpack_snapshot
from selfheal.backup.sources.archive import SourceError, write_tree_archive
from selfheal.backup.transports.mount import MountTransport, mark_nas
from selfheal.core.artifacts import artifact_name
from tests.support.fuzz import Cases, fuzz_settings

# Archiving a small tree takes milliseconds; one blocked on a FIFO never ends.
ARCHIVE_WAIT_S: Final = 30.0
OUTSIDE_MARKER: Final = b"outside the snapshot: never archived"

NAMES = st.sampled_from(
    [
        "with space",
        " lead",
        "trail ",
        "new\nline",
        "tab\there",
        "\u00fc",
        "\u65e5\u672c\u8a9e",
        "e\u0301",
        "\u202eevil",
        "a" * 255,
        "\u00e9" * 127,
        os.fsdecode(b"not-utf8-\xff\xfe"),
        "-rf",
        "*?[",
        "\\",
        ".hidden",
        "...",
        "x.tar",
    ]
) | st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"),
    min_size=1,
    max_size=20,
).filter(lambda name: name not in (".", ".."))

Kind = Literal["file", "dir", "link", "fifo", "socket", "hardlink"]


@dataclass(frozen=True)
class Node:
    kind: Kind
    name: str
    content: bytes = b""
    target: str = ""  # a link's target (for hardlink: an earlier file's name)


@st.composite
def nodes(draw: st.DrawFn, depth: int = 0) -> list[Any]:
    """A folder's entries: (node, children) pairs, children only for folders."""
    names = draw(st.lists(NAMES, min_size=0, max_size=5, unique_by=os.fsencode))
    made: list[Any] = []
    for name in names:
        kinds: list[Kind] = ["file", "file", "link", "fifo", "socket", "hardlink"]
        if depth < 2:
            kinds.append("dir")
        kind = draw(st.sampled_from(kinds))
        if kind == "file":
            made.append((Node(kind, name, content=draw(st.binary(max_size=300))), []))
        elif kind == "dir":
            made.append((Node(kind, name), draw(nodes(depth + 1))))
        elif kind == "link":
            siblings = [node.name for node, _ in made] or ["missing"]
            target = draw(
                st.sampled_from(siblings)  # inside (maybe a link itself, or dangling)
                | st.sampled_from(
                    [
                        "/etc/passwd",  # absolute
                        "../outside/secret",  # up and out
                        "../" * (depth + 1) + "outside/secret",
                        "sub/../" + siblings[0],  # inside, the long way
                        "../" * depth + "." if depth else ".",
                        "missing/../../x",
                        "",  # replaced by a link to the folder outside (below)
                    ]
                )
            )
            made.append((Node(kind, name, target=target), []))
        elif kind == "hardlink":
            files = [node.name for node, _ in made if node.kind == "file"]
            if files:
                made.append((Node(kind, name, target=draw(st.sampled_from(files))), []))
        else:
            made.append((Node(kind, name), []))
    return made


def build(folder: Path, entries: list[Any], outside: Path) -> list[str]:
    """Make the tree; returns the relative paths archiving must refuse."""
    refused: list[str] = []
    for node, children in entries:
        path = folder / node.name
        if node.kind == "file":
            path.write_bytes(node.content)
        elif node.kind == "dir":
            path.mkdir()
            inner = build(path, children, outside)
            refused += [os.path.join(node.name, p) for p in inner]
        elif node.kind == "link":
            target = node.target or str(outside)
            os.symlink(target, path)
        elif node.kind == "hardlink":
            os.link(folder / node.target, path)
        elif node.kind == "fifo":
            os.mkfifo(path)
            refused.append(node.name)
        else:
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.bind(str(path))
                except OSError:  # a path too long for AF_UNIX: a FIFO stands in
                    os.mkfifo(path)
            refused.append(node.name)
    return refused


def escaping_links(root: Path) -> list[str]:
    """Symlinks whose target is absolute, climbs out by its text, or resolves outside."""
    real_root = os.path.realpath(root)
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                continue
            relative = os.path.relpath(path, root)
            target = os.readlink(path)
            lexical = os.path.normpath(os.path.join(os.path.dirname(relative), target))
            resolved = os.path.realpath(path)
            inside = resolved == real_root or resolved.startswith(real_root + os.sep)
            if os.path.isabs(target) or lexical.split(os.sep)[0] == ".." or not inside:
                found.append(relative)
    return found


def picture(root: Path) -> dict[str, tuple[str, Any]]:
    """Every entry under root: its kind and content (file bytes, link target)."""
    seen: dict[str, tuple[str, Any]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                seen[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                seen[relative] = ("dir", None)
            else:
                seen[relative] = ("file", Path(path).read_bytes())
    return seen


def archive_within_bound(root: Path, dest: Path, compression: Any) -> Any:
    """write_tree_archive in a thread: a call that blocks (on a FIFO) fails the test."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(write_tree_archive(root, dest, compression))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(ARCHIVE_WAIT_S)
    assert not worker.is_alive(), f"archiving {root} blocked for {ARCHIVE_WAIT_S}s"
    return outcome[0]


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="snap-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@given(tree=nodes(), compression=st.sampled_from(["none", "gzip", "zstd"]))
@fuzz_settings(1000)
def test_odd_trees_are_archived_whole_or_refused_naming_the_entry(
    scratch: Path, cases: Cases, tree: list[Any], compression: str
) -> None:
    cases.tried()
    case = Path(tempfile.mkdtemp(dir=scratch))
    outside = case / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(OUTSIDE_MARKER)
    root = case / "snapshot dir"
    root.mkdir()
    special = build(root, tree, outside)
    escaping = escaping_links(root)
    dest = case / "out.tar"
    outcome = archive_within_bound(root, dest, compression)
    event("refused" if special or escaping else "archived")
    if special or escaping:
        assert isinstance(outcome, SourceError), outcome
        assert outcome.kind == "archive.unsafe", outcome
        assert any(repr(p) in str(outcome) for p in special + escaping), (outcome, special)
        assert not dest.exists() and list(case.glob("out.tar*")) == []
        return
    assert not isinstance(outcome, BaseException), outcome
    # What was archived unpacks (as the drill unpacks) to the same tree.
    plain = case / "plain.tar"
    if compression == "none":
        plain = dest
    elif compression == "gzip":
        import gzip

        plain.write_bytes(gzip.decompress(dest.read_bytes()))
    else:
        import subprocess

        subprocess.run(["zstd", "-q", "-d", str(dest), "-o", str(plain)], check=True, timeout=30)
    unpacked = case / "unpacked"
    unpacked.mkdir()
    unpack_snapshot(plain, unpacked)
    assert picture(unpacked) == picture(root)
    assert OUTSIDE_MARKER not in plain.read_bytes()


# -- archives whose members would escape -------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", data: bytes = b"x") -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


SAFE = st.sampled_from(
    [
        member("db/state"),
        member("db/meta/CURRENT"),
        member("db", tarfile.DIRTYPE),
        member("with space/\u00fc"),
        member("rel-link", tarfile.SYMTYPE, link="db/state"),
        member("/tmp/escaped-absolute"),  # the leading / is dropped: it lands inside
    ]
)
ESCAPES = st.sampled_from(
    [
        member("../escaped"),
        member("../../escaped"),
        member("db/../../escaped"),
        member("up", tarfile.SYMTYPE, link="../"),
        member("abs", tarfile.SYMTYPE, link="/etc"),
        member("abs-file", tarfile.SYMTYPE, link="/etc/passwd"),
        member("hard", tarfile.LNKTYPE, link="/etc/passwd"),
        member("hard-up", tarfile.LNKTYPE, link="../outside"),
        member("fifo", tarfile.FIFOTYPE),
        member("dev", tarfile.CHRTYPE),
        member("blk", tarfile.BLKTYPE),
    ]
)
# A link that is fine alone, then a member written through it.
THROUGH_LINK = st.just([member("door", tarfile.SYMTYPE, link=".."), member("door/escaped")])


@given(
    members=st.lists(SAFE, max_size=4)
    .flatmap(
        lambda safe: st.tuples(st.just(safe), ESCAPES.map(lambda m: [m]) | THROUGH_LINK).map(
            lambda both: [*both[0], *both[1]]
        )
    )
    .flatmap(st.permutations)
)
@fuzz_settings(150)
def test_an_archive_whose_members_escape_is_refused_and_nothing_lands_outside(
    scratch: Path, cases: Cases, members: list[Any]
) -> None:
    cases.tried()
    case = Path(tempfile.mkdtemp(dir=scratch))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    archive = case / "snapshot.tar"
    archive.write_bytes(buffer.getvalue())
    into = case / "drill" / "data"
    into.mkdir(parents=True)
    before = sorted(str(p) for p in case.rglob("*") if not str(p).startswith(str(into)))
    with pytest.raises(UnsafeArchive) as refused:
        unpack_snapshot(archive, into)
    assert str(refused.value).startswith("the archive cannot be unpacked safely: ")
    after = sorted(str(p) for p in case.rglob("*") if not str(p).startswith(str(into)))
    assert after == before, "something was written outside the folder"
    assert not Path("/tmp/escaped-absolute").exists()


@given(data=st.binary(max_size=2000))
@fuzz_settings(100)
def test_bytes_that_are_not_a_tar_are_refused(scratch: Path, cases: Cases, data: bytes) -> None:
    cases.tried()
    case = Path(tempfile.mkdtemp(dir=scratch))
    archive = case / "snapshot.tar"
    archive.write_bytes(data)
    into = case / "data"
    into.mkdir()
    try:
        unpack_snapshot(archive, into)
    except UnsafeArchive as exc:
        assert str(exc).startswith("the archive cannot be unpacked safely: ")


@given(escape=ESCAPES | THROUGH_LINK.map(lambda pair: pair[1]))
@fuzz_settings(12)
def test_a_drill_of_an_archive_whose_members_escape_fails_naming_why(
    scratch: Path, cases: Cases, escape: Any
) -> None:
    """The whole drill, from a NAS folder: the artifact is a bad backup (a failed drill,
    recorded and raised like one), not a drill that could not run."""
    cases.tried()
    case = Path(tempfile.mkdtemp(dir=scratch))
    members = [member("db/state"), member("door", tarfile.SYMTYPE, link=".."), escape]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    created = datetime.now(UTC)
    name = artifact_name("typesense", created, "tar", unique="abc123")
    local = case / name
    local.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    manifest = {"name": name, "size": local.stat().st_size, "sha256": digest}
    manifest |= {"compression": "none", "collections": []}
    nas = case / "nas"
    nas.mkdir()
    mark_nas(nas, "fuzz-nas")
    transport = MountTransport(nas, require_mount_point=False)

    async def run() -> DrillResult:
        await transport.put(
            local,
            PurePosixPath("typesense") / name,
            sha256=digest,
            size=local.stat().st_size,
            manifest=json.dumps(manifest).encode(),
        )
        return await drill(transport, "typesense", scratch=case / "drill")

    result = anyio.run(run)
    assert not result.ok
    assert result.detail.startswith("the archive cannot be unpacked safely: "), result.detail
    assert list((case / "drill").iterdir()) == [], "the drill folder is removed"
    assert not (case / "escaped").exists() and not (case / "drill" / "escaped").exists()
