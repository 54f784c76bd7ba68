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


def _hammer(path: str, tag: str, n: int) -> None:
    from facefuse.data._io import atomic_write_json

    for i in range(n):
        # Large enough that a write is several syscalls: a shared temp name would interleave.
        atomic_write_json(path, {"writer": tag, "i": i, "pad": tag * 20000})


def test_two_processes_writing_one_file_never_collide(tmp_path: Path) -> None:
    import json
    import multiprocessing as mp

    target = tmp_path / "state.json"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(target), tag, 150)) for tag in "ab"]
    for p in procs:
        p.start()
    seen: set[str] = set()
    while any(p.is_alive() for p in procs):
        if target.exists():
            data = json.loads(target.read_text())  # a reader only ever sees one whole version
            assert data["pad"] == data["writer"] * 20000
            seen.add(data["writer"])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0  # no writer failed on a temp file another one renamed away
    assert json.loads(target.read_text())["i"] == 149
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind
