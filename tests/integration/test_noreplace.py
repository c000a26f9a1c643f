"""Renames that never replace: each way we have, on real files (tmpfs and the test's disk)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from selfheal.backup.transports.noreplace import checked_rename, exclusive_rename, rename_noreplace
from tests.support.mounts import Mounts


def exclusive(src: Path, dst: Path) -> None:
    if not exclusive_rename(src, dst):
        pytest.skip("no renameat2/renamex_np exclusive rename on this system")


WAYS: dict[str, Callable[[Path, Path], None]] = {
    "link": rename_noreplace,
    "exclusive": exclusive,
    "checked": checked_rename,
}


@pytest.fixture(params=["disk", "tmpfs"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "disk":
        return tmp_path
    mounts: Mounts = request.getfixturevalue("mounts")
    return mounts.tmpfs("fs", size="4m")


@pytest.mark.parametrize("way", sorted(WAYS))
def test_a_free_name_is_taken(folder: Path, way: str) -> None:
    src, dst = folder / "x.partial", folder / "x"
    src.write_bytes(b"new")
    WAYS[way](src, dst)
    assert dst.read_bytes() == b"new" and not src.exists()


@pytest.mark.parametrize("way", sorted(WAYS))
def test_a_taken_name_is_never_replaced(folder: Path, way: str) -> None:
    src, dst = folder / "x.partial", folder / "x"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        WAYS[way](src, dst)
    assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"
