"""`features: auto` on the quickstart's sets: extraction in the driver process vs the Ray Data job.

The sweep driver starts Ray right after the features check, so running the extraction as the Ray
Data job costs only the job's own overhead if Ray is started first and reused by Tune. In one
run, on a synthetic suite of the quickstart's size and two tiny backbones of the embedded
widths (random weights: extraction time does not depend on them), for the quickstart job's
entries (train set without mirrored maps, three eval sets with them):

1. ``extract(use_ray=False)`` into an empty store: what ``features: auto`` does today;
2. ``init_ray()`` as the sweep driver calls it (timed apart: the sweep pays it either way);
3. ``extract(use_ray=True)`` on that Ray into another empty store.

Prints seconds of each and the extra seconds the Ray Data job would add to the quickstart.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_auto_features.py [--work /tmp/ffauto]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ffauto"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.features.extraction import DatasetWork, extract
    from facefuse.features.store import ShardStore
    from facefuse.synth import build_suite, suite_is_complete
    from facefuse.sweep.tuner import init_ray

    work = args.work.resolve()
    data = work / "data"
    if not suite_is_complete(data, seed=0):
        t0 = time.perf_counter()
        build_suite(data, seed=0, progress=False)  # the embedded default's size
        print(f"suite built in {time.perf_counter() - t0:.0f}s (not counted)")
    torch.manual_seed(0)
    ckpts = (work / "arcface.pth", work / "adaface.ckpt")
    save_insightface(get_model("ir_tiny"), ckpts[0])
    save_adaface(get_model("ir_tiny", layout="adaface"), ckpts[1])
    # jobs/quickstart.yaml: flip_augment false for the train set, eval sets with flips
    sets = [DatasetWork("synth_train", False)] + [DatasetWork(d, True) for d in
                                                   ("synth_lfw", "synth_ijbb", "synth_ijbc")]
    seconds = {}
    for label, use_ray in (("driver process", False), ("Ray Data job", True)):
        store = work / f"store_{'ray' if use_ray else 'driver'}"
        shutil.rmtree(store, ignore_errors=True)
        if use_ray:
            t0 = time.perf_counter()
            init_ray()
            print(f"init_ray (paid by the sweep either way): {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        summary = extract(ShardStore(store), data, ckpts, sets, use_ray=use_ray)
        seconds[label] = time.perf_counter() - t0
        print(f"{label:15s} {summary['images']} images, {seconds[label]:.1f}s, "
              f"{summary['images'] / seconds[label]:.1f} images/s")
    extra = seconds["Ray Data job"] - seconds["driver process"]
    print(f"Ray Data job / driver process: {seconds['Ray Data job'] / seconds['driver process']:.2f}x"
          f" time; extra seconds for features: auto: {extra:+.1f}")


if __name__ == "__main__":
    main()
