"""Load: a sweep of many short trials, several at a time, on the embedded-style local setup.

Builds the tiny synthetic world the tests use (real formats, two random tiny backbones in the
official layouts), fills the feature cache, starts a local Ray with ``--cpus`` logical CPUs and
runs one sweep of ``--trials`` one-epoch trials, ``--concurrent`` at a time, into an sqlite
MLflow store. Reports:

- every trial in MLflow: trial runs of the sweep counted (and their statuses);
- the sqlite store never locked: every log record of the driver (MLflow, SQLAlchemy, our
  tracking callback) captured and searched for "database is locked", plus tracking writes
  the callback retried or dropped;
- driver memory: resident set size of this process sampled every 0.2 s by a thread
  (/proc/self/status), the peak so far recorded when 16 and when all trials had finished.

    .venv/bin/python benchmarks/bench_load.py [--trials 64] [--concurrent 4] [--cpus 4]
                                              [--trainable real|selftest] [--workdir DIR]

``--trainable real`` (default) is facefuse.train.run_trial with tiny params; ``selftest`` is the
diagnostic trainable (no model: isolates the orchestration and tracking load).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_PARAMS = {"batch_size": 32, "d_model": 32, "fusion_hidden": 64, "embedding_size": 32}
EVAL = ["synth_lfw", "synth_cfp_fp", "synth_ijbb", "synth_ijbc"]


def rss_mb() -> float:
    """Returns this process's resident set size in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class Sampler(threading.Thread):
    """Samples driver RSS and counts finished trials (result.json rows at the last epoch)."""

    def __init__(self, storage: Path, epochs: int, marks: tuple[int, ...]) -> None:
        super().__init__(daemon=True)
        self.storage, self.epochs, self.marks = storage, epochs, marks
        self.peak = 0.0
        self.at: dict[int, dict[str, float]] = {}
        self.done = 0
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def finished(self) -> int:
        n = 0
        for path in self.storage.glob("*/*/result.json"):
            try:
                last = path.read_text().strip().splitlines()[-1]
                if json.loads(last).get("epoch", 0) >= self.epochs:
                    n += 1
            except (IndexError, ValueError, OSError):
                continue
        return n

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb())
            if tick % 5 == 0:  # the directory scan every second is enough
                self.scan()
            tick += 1
            time.sleep(0.2)
        self.scan()  # the sweep may end between two scans

    def scan(self) -> None:
        """Counts finished trials and records the RSS of every mark just reached."""
        self.done = self.finished()
        for m in self.marks:
            if m not in self.at and self.done >= m:
                self.at[m] = {"peak_rss_mb": self.peak, "rss_mb": rss_mb(),
                              "t_s": time.perf_counter() - self.t0}


class Capture(logging.Handler):
    """Keeps every log record's text (any logger, any level)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a bad record must not break the benchmark
            pass


def build_world(base: Path) -> dict[str, Path]:
    """Returns the paths of the tests' tiny world (tests/conftest.py), built under base."""
    import torch

    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.synth import build_suite, suite_is_complete
    from tests.conftest import TINY_SUITE

    data = base / "data"
    if not suite_is_complete(data, seed=3, **TINY_SUITE):
        build_suite(data, seed=3, workers=1, progress=False, **TINY_SUITE)
    if not (base / "adaface.ckpt").exists():
        torch.manual_seed(0)
        save_insightface(get_model("ir_tiny", widths=(4, 8, 12, 16), num_features=32),
                         base / "arcface.pth")
        save_adaface(get_model("ir_tiny", widths=(4, 8, 16, 32), num_features=32,
                               layout="adaface"), base / "adaface.ckpt")
    return {"data": data, "arcface": base / "arcface.pth", "adaface": base / "adaface.ckpt"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=4, help="logical CPUs given to ray.init")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--trainable", choices=("real", "selftest"), default="real")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the world, cache, store and results here (default: a temp dir)")
    args = ap.parse_args()

    base = args.workdir or Path(tempfile.mkdtemp(prefix="facefuse-bench-load-"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(base / "home")  # Ray's auth token stays in the work dir
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    capture = Capture()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(capture)
    for name in ("sqlalchemy", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("facefuse").setLevel(logging.DEBUG)

    t0 = time.perf_counter()
    world = build_world(base)
    run_name = f"load{args.trials}x{args.concurrent}-{args.trainable}-{int(time.time())}"
    job = {
        "name": run_name, "seed": 0, "features": "auto", "trials": args.trials, "epochs": args.epochs,
        "data": {"root": str(world["data"]), "train": "synth_train", "eval": EVAL,
                 "cache_dir": str(base / "cache")},
        "backbones": {"arcface": str(world["arcface"]), "adaface": str(world["adaface"])},
        "search_space": str(REPO / "search_spaces" / "mixed_quality.yaml"),
        "objective": "mean:all", "asha": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_worker": 1, "max_concurrent_trials": args.concurrent},
        "tracking": {"uri": f"sqlite:///{base}/mlflow.db", "experiment": run_name},
        "storage": str(base / "results"), "params": TINY_PARAMS,
    }
    job_path = base / f"{run_name}.yaml"
    job_path.write_text(yaml.safe_dump(job))

    from facefuse.pipeline import prepare_job

    # features: auto starts this Ray for its extraction job; the sweep then reuses it
    ray_kwargs = dict(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    spec, _ = prepare_job(job_path, cwd=base, ray_init_kwargs=ray_kwargs)
    setup_s = time.perf_counter() - t0

    import ray

    from facefuse.sweep import run_sweep

    if not ray.is_initialized():
        ray.init(**ray_kwargs)
    rss_start = rss_mb()
    sampler = Sampler(Path(spec.storage), args.epochs,
                      tuple(sorted({min(16, args.trials), args.trials})))
    sampler.start()
    t1 = time.perf_counter()
    trainable = None if args.trainable == "real" else \
        "facefuse.sweep.selftest.quadratic_trainable"
    try:
        result = run_sweep(spec, trainable=trainable, flush_timeout_s=120)
    finally:
        sweep_s = time.perf_counter() - t1
        sampler.stop.set()
        sampler.join(timeout=5)
        ray.shutdown()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(spec.tracking.uri)
    exp = client.get_experiment_by_name(run_name)
    runs = client.search_runs([exp.experiment_id],
                              f"tags.`facefuse.sweep_id` = '{result.sweep_id}'", max_results=5000)
    kids = [r for r in runs if r.data.tags.get("facefuse.kind") == "trial"]
    statuses: dict[str, int] = {}
    for r in kids:
        statuses[r.info.status] = statuses.get(r.info.status, 0) + 1
    with_metrics = sum(1 for r in kids if "objective" in r.data.metrics)
    locked = [ln for ln in capture.lines if "database is locked" in ln.lower()]
    retried = [ln for ln in capture.lines if "does not answer" in ln or "will retry" in ln]
    dropped = [ln for ln in capture.lines if "dropping tracking operation" in ln]

    print(f"\nload sweep: {args.trials} trials x {args.epochs} epoch, {args.concurrent} concurrent, "
          f"ray num_cpus={args.cpus}, trainable={args.trainable}, machine cores={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"setup (world + cache) {setup_s:.0f}s, sweep {sweep_s:.0f}s "
          f"({sweep_s / max(args.trials, 1):.1f}s per trial)")
    print(f"Tune trials: {len(result.trials)} ({result.num_errors} errors); MLflow trial runs: "
          f"{len(kids)} {statuses}, with metrics: {with_metrics}; parent runs: "
          f"{sum(1 for r in runs if r.data.tags.get('facefuse.kind') == 'sweep')}; "
          f"tracking ops left unsent: {result.pending_tracking_ops}")
    print(f"log records captured: {len(capture.lines)}; 'database is locked': {len(locked)}; "
          f"tracking retries: {len(retried)}; dropped writes: {len(dropped)}")
    print(f"driver RSS: {rss_start:.0f} MiB after ray.init", end="")
    for m, v in sorted(sampler.at.items()):
        print(f"; after {m} trials done ({v['t_s']:.0f}s): peak {v['peak_rss_mb']:.0f} MiB, "
              f"now {v['rss_mb']:.0f} MiB", end="")
    print(f"; peak overall {sampler.peak:.0f} MiB")
    for ln in (locked + dropped)[:5]:
        print("  ", ln)
    ok = (len(kids) == args.trials == len(result.trials) and not locked and not dropped
          and result.pending_tracking_ops == 0)
    print(f"work dir: {base}")
    print("OK" if ok else "PROBLEM")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
