"""Feature store: Ray Data extraction vs the single-process path; training read from s3:// vs local.

In one run, on the same synthetic data and the same two random tiny backbones:

1. extraction images/s: ``extract(use_ray=False)`` (one process: decode, both backbones, original
   and mirrored maps, shards written) against ``extract(use_ray=True)`` (one Ray Data job: CPU
   decode tasks, one backbone actor), each into an empty local store; Ray's start is timed apart;
2. reader: one trial (2 epochs) reading an s3:// store on a local moto server (staged to a fresh
   node-local folder) against the same trial reading a local store: ``time/steps_per_s`` and
   ``time/data_share`` per epoch, and whether every other metric is identical.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_feature_store.py [--work /tmp/ffbench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ffbench"))
    ap.add_argument("--identities", type=int, default=60)
    ap.add_argument("--per-identity", type=int, default=10)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.features.extraction import DatasetWork, extract
    from facefuse.features.store import ShardStore
    from facefuse.synth import build_suite

    work = args.work.resolve()
    data = work / "data"
    if not (data / "synth_manifest.json").exists():
        build_suite(data, seed=0, workers=2, progress=False, train_identities=args.identities,
                    train_images_per_identity=args.per_identity, verification_pairs=200,
                    ijb_identities=10, ijb_templates_per_identity=2, ijb_impostor_pairs=100)
    torch.manual_seed(0)
    ckpts = (work / "arcface.pth", work / "adaface.ckpt")
    save_insightface(get_model("ir_tiny", widths=(4, 8, 12, 16), num_features=32), ckpts[0])
    save_adaface(get_model("ir_tiny", widths=(4, 8, 16, 32), num_features=32, layout="adaface"),
                 ckpts[1])
    sets = [DatasetWork("synth_train", True), DatasetWork("synth_lfw", True),
            DatasetWork("synth_ijbb", True)]

    results = {}
    for name, use_ray in (("single process", False), ("Ray Data job", True)):
        store = work / f"store_{'ray' if use_ray else 'single'}"
        shutil.rmtree(store, ignore_errors=True)
        if use_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
            print(f"ray.init: {time.perf_counter() - t0:.1f}s (not counted below)")
        summary = extract(ShardStore(store), data, ckpts, sets, shard_size=args.shard_size,
                          use_ray=use_ray)
        results[name] = summary
        print(f"{name:15s} {summary['images']} images, {summary['shards']} shards, "
              f"{summary['seconds']:.1f}s, {summary['images_per_s']:.1f} images/s")
    ratio = results["Ray Data job"]["images_per_s"] / results["single process"]["images_per_s"]
    print(f"extraction images/s, Ray Data / single process: {ratio:.2f}x")

    # reader: s3:// (moto server on loopback) staged vs local
    from moto.server import ThreadedMotoServer
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_DEFAULT_REGION="us-east-1",
                      FACEFUSE_STAGE_DIR=str(work / "stage"))
    shutil.rmtree(work / "stage", ignore_errors=True)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bench")
    reader_sets = [DatasetWork("synth_train", True), DatasetWork("synth_lfw", True)]
    extract(ShardStore("s3://bench/store"), data, ckpts, reader_sets, shard_size=args.shard_size,
            use_ray=False)
    from facefuse.train.trial import TrialContext, run_training

    hist = {}
    for label, store in (("s3:// staged", "s3://bench/store"), ("local", str(work / "store_single"))):
        ctx = TrialContext(data_root=str(data), cache_dir=store, arcface_checkpoint=str(ckpts[0]),
                           adaface_checkpoint=str(ckpts[1]), train_dataset="synth_train",
                           eval_datasets=["synth_lfw"], objective={"quality": "all"})
        t0 = time.perf_counter()
        hist[label] = run_training({"epochs": 2, "batch_size": 64, "d_model": 32,
                                    "fusion_hidden": 64, "embedding_size": 32, "beta": 0.1,
                                    "seed": 0}, ctx, lambda m, c: None, None)
        wall = time.perf_counter() - t0
        for e, m in enumerate(hist[label], 1):
            print(f"{label:13s} epoch {e}: steps/s {m['time/steps_per_s']:.1f}, "
                  f"data_share {m['time/data_share']:.3f}")
        print(f"{label:13s} trial wall (load + stage + 2 epochs): {wall:.1f}s")
    same = all({k: v for k, v in a.items() if not k.startswith("time/")} ==
               {k: v for k, v in b.items() if not k.startswith("time/")}
               for a, b in zip(hist["s3:// staged"], hist["local"]))
    s3_rate = sum(m["time/steps_per_s"] for m in hist["s3:// staged"]) / 2
    local_rate = sum(m["time/steps_per_s"] for m in hist["local"]) / 2
    print(f"reader steps/s, s3:// staged / local: {s3_rate / local_rate:.2f}x; "
          f"metrics identical: {same}")
    server.stop()


if __name__ == "__main__":
    main()
