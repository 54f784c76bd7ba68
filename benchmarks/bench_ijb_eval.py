"""Benchmark: IJB-C-sized 1:1 evaluation, facefuse.evaluation against the reference approach.

From image features and meta arrays to the TAR@FAR table:
- reference: insightface eval_ijbc.py style (Python loop over templates with np.where, float64
  gathers of 100,000 pairs at a time, sklearn roc_curve), from tests/evaluation/reference.py;
- ours: facefuse.evaluation.ijb_scores + tar_at_far.
Each approach runs in its own subprocess on the same saved data, so its peak memory (VmHWM,
which counts numpy's C allocations) is its own. The script checks that the TAR values are
identical and prints both times, the ratio and the peak memory. It also times
verification_accuracy on 6,000 pairs against the reference loops.

Synthetic data with IJB-C's structure at --scale 1: 469,375 images of 512 dims, 3,531
subjects, 3,531 gallery and 19,593 probe templates (23,124), each template several media,
each media one or several images; 15,658,489 probe-vs-gallery pairs of which 19,557 genuine,
listed sorted by template as in ijbc_template_pair_label.txt. Counts of images, templates and
genuine pairs scale with --scale, pairs with --scale squared (the probe x gallery density is
kept). --pairs random draws uniform random template pairs instead (a worst case for our
blocked scoring).

Usage: .venv/bin/python benchmarks/bench_ijb_eval.py [--scale 0.1] [--pairs ijb|random]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IJBC = {"images": 469_375, "subjects": 3_531, "probes": 19_593, "pairs": 15_658_489, "genuine": 19_557}
NOISE_LOW, NOISE_HIGH = 1.0, 6.0
ARRAYS = ("img_feats", "face_scores", "templates", "medias", "p1", "p2", "labels")


def load_reference():
    spec = importlib.util.spec_from_file_location("reference", ROOT / "tests" / "evaluation" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _counts_with_total(rng: np.random.Generator, counts: np.ndarray, total: int) -> np.ndarray:
    """Adds or removes single images at random media until the counts sum to total."""
    counts = counts.copy()
    diff = total - int(counts.sum())
    if diff > 0:
        np.add.at(counts, rng.integers(0, len(counts), diff), 1)
    while diff < 0:
        spare = np.flatnonzero(counts > 1)
        take = rng.choice(spare, size=min(-diff, len(spare)), replace=False)
        counts[take] -= 1
        diff += len(take)
    return counts


def generate(scale: float, seed: int, pairs_kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_img = max(50, round(IJBC["images"] * scale))
    n_sub = max(5, round(IJBC["subjects"] * scale))
    n_probe = max(10, round(IJBC["probes"] * scale))
    n_gal = n_sub
    n_tmpl = n_gal + n_probe
    # Gallery templates carry small ids and probes larger sparse ids, as in the IJB-C meta.
    gal_ids = np.arange(1, n_gal + 1)
    probe_ids = np.sort(rng.choice(np.arange(n_gal + 1, n_gal + 1 + 8 * n_probe), n_probe, replace=False))
    tmpl_ids = np.concatenate([gal_ids, probe_ids])
    tmpl_subject = np.concatenate([np.arange(n_sub), rng.integers(0, n_sub, n_probe)])

    media_per_tmpl = 1 + rng.poisson(2.5, n_tmpl)
    n_media = int(media_per_tmpl.sum())
    # Stills are one image; video media a few to a few dozen frames.
    video = rng.random(n_media) < 0.45
    imgs_per_media = np.where(video, 1 + rng.geometric(0.1, n_media), 1)
    imgs_per_media = _counts_with_total(rng, imgs_per_media, n_img)
    media_tmpl = np.repeat(np.arange(n_tmpl), media_per_tmpl)
    media_ids = rng.permutation(n_media) + 100_000
    templates = np.repeat(tmpl_ids[media_tmpl], imgs_per_media)
    medias = np.repeat(media_ids, imgs_per_media)
    img_subject = np.repeat(tmpl_subject[media_tmpl], imgs_per_media)

    # Image quality varies: noisier images get lower detector scores. The noise level puts
    # TAR@FAR=1e-4 in the 0.9s, like real models, so the TAR table is not all ones.
    quality = rng.beta(2.0, 2.0, n_img).astype(np.float32)
    centers = rng.standard_normal((n_sub, 512), dtype=np.float32)
    img_feats = rng.standard_normal((n_img, 512), dtype=np.float32)
    img_feats *= (NOISE_LOW + (NOISE_HIGH - NOISE_LOW) * (1 - quality))[:, None]
    img_feats += centers[img_subject]
    img_feats *= 8.0
    face_scores = (0.4 + 0.6 * quality).astype(np.float32)

    n_pairs = round(IJBC["pairs"] * scale * scale)
    n_gen = min(n_probe, round(IJBC["genuine"] * scale))
    if pairs_kind == "ijb":
        gen_probe = rng.choice(n_probe, n_gen, replace=False)
        gen_gal = tmpl_subject[n_gal + gen_probe]  # gallery template i is subject i
        keys = np.zeros(0, dtype=np.int64)
        n_imp = n_pairs - n_gen
        while len(keys) < n_imp:
            g = rng.integers(0, n_gal, int(1.3 * n_imp) + 100)
            p = rng.integers(0, n_probe, len(g))
            ok = tmpl_subject[g] != tmpl_subject[n_gal + p]
            keys = np.unique(np.concatenate([keys, g[ok] * n_probe + p[ok]]))
        drop = np.zeros(len(keys), dtype=bool)
        drop[rng.choice(len(keys), len(keys) - n_imp, replace=False)] = True
        keys = np.concatenate([gen_gal * n_probe + gen_probe, keys[~drop]])
        labels = np.concatenate([np.ones(n_gen, np.int64), np.zeros(n_imp, np.int64)])
        order = np.argsort(keys, kind="stable")  # listed by gallery then probe template
        keys, labels = keys[order], labels[order]
        p1, p2 = tmpl_ids[keys // n_probe], tmpl_ids[n_gal + keys % n_probe]
    else:
        a = rng.integers(0, n_tmpl, int(1.05 * n_pairs) + 100)
        b = rng.integers(0, n_tmpl, len(a))
        keep = a != b
        a, b = a[keep][:n_pairs], b[keep][:n_pairs]
        labels = (tmpl_subject[a] == tmpl_subject[b]).astype(np.int64)
        p1, p2 = tmpl_ids[a], tmpl_ids[b]
    return {"img_feats": img_feats, "face_scores": face_scores, "templates": templates,
            "medias": medias, "p1": p1, "p2": p2, "labels": labels}


def run_approach(name: str, workdir: Path) -> None:
    """Subprocess body: load the data, time one approach, print one JSON line."""
    data = {k: np.load(workdir / f"{k}.npy") for k in ARRAYS}
    if name == "reference":
        ref = load_reference()
    else:
        sys.path.insert(0, str(ROOT))
        from facefuse.evaluation import ijb_scores, tar_at_far
    rss_loaded = vm_hwm_bytes()
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    if name == "reference":
        scores = ref.ref_ijb_scores(data["img_feats"], data["face_scores"], data["templates"],
                                    data["medias"], data["p1"], data["p2"])
        t_b = time.perf_counter()
        tar = ref.ref_tar_at_far(data["labels"], scores)
    else:
        scores = ijb_scores(data["img_feats"], data["face_scores"], data["templates"],
                            data["medias"], data["p1"], data["p2"])
        t_b = time.perf_counter()
        tar = tar_at_far(data["labels"], scores)
    t1 = time.perf_counter()
    cpu = _cpu_seconds() - cpu0
    np.save(workdir / f"scores_{name}.npy", scores)
    print(json.dumps({"name": name, "seconds": t1 - t0, "scores_s": t_b - t0, "tar_s": t1 - t_b, "cpu_s": cpu,
                      "tar": {str(k): v for k, v in tar.items()}, "peak_bytes": vm_hwm_bytes(),
                      "loaded_bytes": rss_loaded}))


def time_verification(seed: int) -> tuple[float, float, bool]:
    """Returns (ours s, reference s, equal) for 6,000 pairs of 512-d embeddings."""
    sys.path.insert(0, str(ROOT))
    from facefuse.evaluation import verification_accuracy
    ref = load_reference()
    rng = np.random.default_rng(seed)
    e1 = rng.standard_normal((6000, 512))
    issame = rng.random(6000) < 0.5
    e2 = np.where(issame[:, None], e1, rng.standard_normal((6000, 512))) + 0.9 * rng.standard_normal((6000, 512))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        ours = verification_accuracy(e1, e2, issame)
        best = min(best, time.perf_counter() - t0)
    t0 = time.perf_counter()
    theirs = ref.ref_verification_accuracy(e1, e2, issame)
    ref_s = time.perf_counter() - t0
    return best, ref_s, ours == theirs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = IJB-C size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", choices=("ijb", "random"), default="ijb")
    parser.add_argument("--skip-reference", action="store_true", help="time only ours")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the data here and reuse it on the next run with the same parameters "
                             "(default: a temp dir, deleted at the end)")
    parser.add_argument("--run", choices=("reference", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_approach(args.run, args.workdir)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_ijb_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        params = {"scale": args.scale, "seed": args.seed, "pairs": args.pairs,
                  "noise": [NOISE_LOW, NOISE_HIGH]}
        meta = workdir / "bench_params.json"
        if meta.exists() and json.loads(meta.read_text()) == params:
            data = {k: np.load(workdir / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
            how = "reused from --workdir"
        else:
            meta.unlink(missing_ok=True)
            data = generate(args.scale, args.seed, args.pairs)
            for k, v in data.items():
                np.save(workdir / f"{k}.npy", v)
            meta.write_text(json.dumps(params))  # written last: its presence means complete
            how = f"generated in {time.perf_counter() - t0:.1f} s"
        n_t = len(np.unique(data["templates"]))
        print(f"data: {data['img_feats'].shape[0]:,} images x {data['img_feats'].shape[1]}, {n_t:,} templates, "
              f"{len(data['p1']):,} pairs ({int(data['labels'].sum()):,} genuine), pairs={args.pairs}, {how}")
        del data
        # Ours runs before and after the reference so that a change in machine load during
        # the long reference run shows (the ratio uses the mean of the two).
        runs = [("ours", 1)] if args.skip_reference else [("ours", 1), ("reference", 1), ("ours", 2)]
        results: dict[str, list[dict]] = {}
        for name, _ in runs:
            proc = subprocess.run([sys.executable, __file__, "--run", name, "--workdir", str(workdir)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr, file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["load"] = os.getloadavg()[0]
            results.setdefault(name, []).append(r)
            print(f"{name:>9}: {r['seconds']:7.2f} s wall, {r['cpu_s']:7.2f} s CPU (scores {r['scores_s']:.2f} s, "
                  f"ROC+TAR {r['tar_s']:.2f} s), peak {r['peak_bytes'] / 2**30:.2f} GiB "
                  f"(inputs loaded: {r['loaded_bytes'] / 2**30:.2f} GiB), load after: {r['load']:.1f}", flush=True)
        ours = results["ours"]
        print("TAR@FAR:", {k: round(v, 6) for k, v in ours[0]["tar"].items()})
        ok = all(r["tar"] == ours[0]["tar"] for r in ours)
        if "reference" in results:
            reference = results["reference"][0]
            same = all(r["tar"] == reference["tar"] for r in ours)
            diff = float(np.max(np.abs(np.load(workdir / "scores_ours.npy") - np.load(workdir / "scores_reference.npy"))))
            ours_wall = float(np.mean([r["seconds"] for r in ours]))
            ours_cpu = float(np.mean([r["cpu_s"] for r in ours]))
            ratio = reference["seconds"] / ours_wall
            print(f"TAR identical: {same}; max |score difference| {diff:.2e}; speed-up {ratio:.1f}x wall "
                  f"(ours = {1 / ratio:.3f} of reference), {reference['cpu_s'] / ours_cpu:.1f}x CPU time")
            ok = ok and same and diff <= 1e-9
        ours_s, ref_s, equal = time_verification(args.seed)
        print(f"verification_accuracy, 6,000 pairs: ours {ours_s * 1000:.1f} ms (best of 5), "
              f"reference loops {ref_s:.2f} s, identical: {equal}")
        print(f"load average: {os.getloadavg()}, cores: {os.cpu_count()}")
        return 0 if ok and equal else 1


if __name__ == "__main__":
    sys.exit(main())
