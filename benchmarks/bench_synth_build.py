"""Times the default synthetic-suite build and measures its size on disk.

    .venv/bin/python benchmarks/bench_synth_build.py [--out DIR] [--workers N] [--seed S] [--ladder]

Prints wall time, CPU time (this process plus its workers), images per second and the size of
every part (``--ladder``: the quality ladder synth_q0..synth_q4 instead of the suite). Wall time depends on how busy the machine is: read it together with the load average
printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _size(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="build here and keep it (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ladder", action="store_true", help="time the quality ladder instead")
    args = parser.parse_args()

    from facefuse.synth import MANIFEST, build_ladder, build_suite

    out = args.out or Path(tempfile.mkdtemp(prefix="synth_bench_"))
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
    t0, c0 = time.perf_counter(), time.process_time()
    build = build_ladder if args.ladder else build_suite
    build(out, seed=args.seed, workers=args.workers, progress=False)
    wall = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - c0 + children.ru_utime + children.ru_stime
    print(f"load average after: {os.getloadavg()}")
    if args.ladder:
        from facefuse.synth import LADDER_MANIFEST

        body = json.loads((out / LADDER_MANIFEST).read_text())
        n = 2 * body["pairs"] * len(body["levels"])
        print(f"ladder: {len(body['levels'])} levels x {body['pairs']} pairs = {n} images; wall {wall:.1f} s, "
              f"cpu {cpu:.1f} s (main + workers), {1e3 * cpu / n:.2f} cpu-ms/image; "
              f"{_size(out) / 2**20:.1f} MiB on disk")
        if args.out is None:
            shutil.rmtree(out)
        return
    counts = json.loads((out / MANIFEST).read_text())["counts"]
    n = counts["train_images"] + 10 * counts["verification_pairs"] + counts["synth_ijbb_faces"] + counts["synth_ijbc_faces"]
    print(f"images: {n} ({counts})")
    print(f"wall {wall:.1f} s, cpu {cpu:.1f} s (main + workers), {n / wall:.0f} images/s wall, "
          f"{1e3 * cpu / n:.2f} cpu-ms/image")
    for part in ("faces_synth", "IJB_synth/SYNTH_IJBB", "IJB_synth/SYNTH_IJBC"):
        print(f"{part}: {_size(out / part) / 2**20:.1f} MiB")
    print(f"total on disk: {_size(out) / 2**20:.1f} MiB in {out}")
    if args.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
