"""Files written atomically get the permissions a plain open() would give them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from facefuse.data._io import atomic_write


def test_atomic_write_honours_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.json", "w") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    with atomic_write(tmp_path / "b.bin") as fh:
        fh.write(b"x")
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o666 & ~old
