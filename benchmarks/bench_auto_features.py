"""`features: auto`: the extraction as the Ray Data job against the driver process, same data.

The sweep driver starts Ray before `features: auto` extracts (``facefuse.pipeline.prepare_job``)
and Tune reuses it, so the Ray Data job costs only its own overhead: Ray's start is timed apart
(the sweep pays it either way). In one run, on a synthetic suite (the embedded default's size
unless the size flags say otherwise) and two tiny backbones of the embedded widths (random
weights: extraction time does not depend on them), for the quickstart job's entries (train set
without mirrored maps, three eval sets with them), each into an empty store:

1. ``extract(use_ray=False)``: the single-process path (``prepare features --no-ray``);
2. ``init_ray()`` as the sweep driver calls it (timed apart);
3. ``extract(use_ray=True)`` with one backbone actor (what the job ran before it was sized);
4. ``extract(use_ray=True)`` with the default actor count (one per CPU on a CPU cluster): what
   ``features: auto`` runs now.

Prints seconds, images/s and CPU seconds of each (the driver process's own; for the Ray Data
job its tasks' and actors' as Ray Data counts them: on a shared, loaded machine the CPU seconds
compare the paths' work where the wall times mostly compare the load), the ratios to the
single-process path, the load average before, after each and over the run, and with ``--stats``
Ray Data's stats of each job (which stages it fused).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_auto_features.py [--work /tmp/ffauto]
        [--train-identities 500 --per-identity 20 --pairs 600 --ijb-identities 120] [--stats]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ffauto"))
    ap.add_argument("--train-identities", type=int, default=None,
                    help="suite size knobs (default: the embedded default's)")
    ap.add_argument("--per-identity", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=None, help="pairs per verification set")
    ap.add_argument("--ijb-identities", type=int, default=None)
    ap.add_argument("--shard-size", type=int, default=None, help="default: the store's 4096")
    ap.add_argument("--stats", action="store_true", help="print Ray Data's stats of each job")
    ap.add_argument("--no-one-actor", action="store_true",
                    help="skip the one-actor job (it runs on one CPU: the longest of the three)")
    args = ap.parse_args()

    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.features.extraction import DatasetWork, extract
    from facefuse.features.store import DEFAULT_SHARD_SIZE, ShardStore
    from facefuse.synth import build_suite
    from facefuse.synth.suite import MANIFEST
    from facefuse.sweep.tuner import init_ray

    if args.stats:
        log = logging.getLogger("facefuse.features.extraction")
        log.setLevel(logging.DEBUG)
        log.addHandler(logging.StreamHandler())
    knobs = {k: v for k, v in (("train_identities", args.train_identities),
                               ("train_images_per_identity", args.per_identity),
                               ("verification_pairs", args.pairs),
                               ("ijb_identities", args.ijb_identities)) if v is not None}
    if knobs:
        knobs.setdefault("ijb_impostor_pairs", 1000)  # scoring is not timed; keep the build short
    work = args.work.resolve()
    data = work / "data"
    stamp = work / "suite_knobs.txt"
    if not (data / MANIFEST).exists() or not stamp.exists() or stamp.read_text() != repr(knobs):
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        build_suite(data, seed=0, progress=False, **knobs)
        stamp.write_text(repr(knobs))
        print(f"suite built in {time.perf_counter() - t0:.0f}s (not counted)", flush=True)
    torch.manual_seed(0)
    ckpts = (work / "arcface.pth", work / "adaface.ckpt")
    save_insightface(get_model("ir_tiny"), ckpts[0])
    save_adaface(get_model("ir_tiny", layout="adaface"), ckpts[1])
    # jobs/quickstart.yaml: flip_augment false for the train set, eval sets with flips
    sets = [DatasetWork("synth_train", False)] + [DatasetWork(d, True) for d in
                                                   ("synth_lfw", "synth_ijbb", "synth_ijbc")]
    shard_size = args.shard_size or DEFAULT_SHARD_SIZE
    load = [os.getloadavg()[0]]
    print(f"load average (1 min) at start: {load[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    seconds, cpu, images, ray_started = {}, {}, 0, False
    runs = [("driver process", False, None), ("Ray Data, 1 actor", True, 1),
            ("Ray Data, default", True, None)]
    if args.no_one_actor:
        runs.pop(1)
    for label, use_ray, actors in runs:
        store = work / "store_bench"
        shutil.rmtree(store, ignore_errors=True)
        if use_ray and not ray_started:
            ray_started = True
            t0 = time.perf_counter()
            init_ray()
            print(f"init_ray (paid by the sweep either way): {time.perf_counter() - t0:.1f}s",
                  flush=True)
        t0 = time.perf_counter()
        summary = extract(ShardStore(store), data, ckpts, sets, shard_size=shard_size,
                          use_ray=use_ray, actors=actors)
        seconds[label] = time.perf_counter() - t0
        cpu[label] = summary["cpu_s"]
        images = summary["images"]
        load.append(os.getloadavg()[0])
        cpu_text = f"{cpu[label]:.1f}" if cpu[label] is not None else "?"
        print(f"{label:18s} {images} images, {summary['shards']} shards, {seconds[label]:.1f}s, "
              f"{images / seconds[label]:.1f} images/s, CPU {cpu_text}s "
              f"(load average {load[-1]:.1f})", flush=True)
    shutil.rmtree(work / "store_bench", ignore_errors=True)
    base = seconds["driver process"]
    for label in [r[0] for r in runs if r[1]]:
        cpu_ratio = (f", {cpu[label] / cpu['driver process']:.2f}x CPU seconds"
                     if cpu[label] is not None else "")
        print(f"{label} / driver process: {seconds[label] / base:.2f}x time "
              f"({seconds[label] - base:+.1f}s for features: auto){cpu_ratio}")
    print(f"load average (1 min) over the run: {min(load):.1f}-{max(load):.1f}")


if __name__ == "__main__":
    main()
