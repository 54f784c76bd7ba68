"""Per-trial orchestration overhead and sweep concurrency, in-trial loop vs Ray Train TorchTrainer.

Builds a small synthetic world (real formats, random tiny backbones), fills the cache, then runs
two sweeps of the real trainable on a local Ray: one with the loop inside the Tune trial
(workers_per_trial=1) and one with a two-worker TorchTrainer per trial (DDP on gloo). For every
trial: overhead = Tune's trial wall time minus the time spent in the training loop (train + eval
seconds the loop reports). For every sweep: wall time versus the sum of trial wall times.

    .venv/bin/python benchmarks/bench_orchestration.py [--trials 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml


def _world(base: Path) -> dict[str, Path]:
    import torch

    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.synth import build_suite

    build_suite(base / "data", seed=3, workers=1, progress=False, train_identities=60,
                train_images_per_identity=8, verification_pairs=200, ijb_identities=20,
                ijb_templates_per_identity=2, ijb_impostor_pairs=600)
    torch.manual_seed(0)
    save_insightface(get_model("ir_tiny", widths=(8, 16, 32, 64), num_features=64), base / "a.pth")
    save_adaface(get_model("ir_tiny", widths=(8, 16, 32, 64), num_features=64, layout="adaface"),
                 base / "b.ckpt")
    return {"data": base / "data", "a": base / "a.pth", "b": base / "b.ckpt"}


def _job(base: Path, w: dict[str, Path], name: str, trials: int, epochs: int, workers: int) -> Path:
    repo = Path(__file__).resolve().parents[1]
    job = {
        "name": name, "seed": 0, "features": "auto", "trials": trials, "epochs": epochs,
        "data": {"root": str(w["data"]), "train": "synth_train",
                 "eval": ["synth_lfw", "synth_ijbb"], "cache_dir": str(base / "cache")},
        "backbones": {"arcface": str(w["a"]), "adaface": str(w["b"])},
        "search_space": str(repo / "search_spaces" / "mixed_quality.yaml"),
        "objective": "mean:all", "asha": {"grace_period": epochs, "reduction_factor": 2},
        "resources": {"workers_per_trial": workers, "cpus_per_worker": 0.5 if workers > 1 else 1,
                      "max_concurrent_trials": 2 if workers == 1 else 1},
        "tracking": {"uri": f"sqlite:///{base}/mlflow.db", "experiment": name},
        "storage": str(base / "results"), "params": {"batch_size": 64},
    }
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _measure(base: Path, w: dict[str, Path], name: str, trials: int, epochs: int,
             workers: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep

    job, _ = prepare_job(_job(base, w, name, trials, epochs, workers), cwd=base)
    t0 = time.perf_counter()
    result = run_sweep(job)
    sweep_wall = time.perf_counter() - t0
    client = MlflowClient(job.tracking.uri)
    trial_walls, loop_times = [], []
    for t in result.trials:
        run = client.get_run(t.run_id)
        wall = (run.info.end_time - run.info.start_time) / 1000.0
        loop = sum(m.value for key in ("time/train_s", "time/eval_s")
                   for m in client.get_metric_history(t.run_id, key))
        trial_walls.append(wall)
        loop_times.append(loop)
    total, loop = sum(trial_walls), sum(loop_times)
    return {"trials": len(trial_walls), "sweep_wall_s": sweep_wall, "sum_trial_s": total,
            "mean_trial_s": total / len(trial_walls), "mean_loop_s": loop / len(loop_times),
            "overhead_share": (total - loop) / total, "concurrency": total / sweep_wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["HOME"] = str(base)  # Ray's auth token stays in this run
        os.environ.pop("RAY_ADDRESS", None)
        w = _world(base)
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=False)
        try:
            rows = {"in-trial loop": _measure(base, w, "intrial", args.trials, args.epochs, 1),
                    "TorchTrainer x2": _measure(base, w, "trainer", max(2, args.trials // 2),
                                                args.epochs, 2)}
        finally:
            ray.shutdown()
    print(f"{'mode':>16} {'trials':>6} {'mean trial s':>12} {'mean loop s':>11} "
          f"{'overhead':>9} {'sweep wall s':>12} {'sum trials s':>12} {'concurrency':>11}")
    for mode, r in rows.items():
        print(f"{mode:>16} {r['trials']:>6} {r['mean_trial_s']:>12.1f} {r['mean_loop_s']:>11.1f} "
              f"{r['overhead_share']:>8.0%} {r['sweep_wall_s']:>12.1f} {r['sum_trial_s']:>12.1f} "
              f"{r['concurrency']:>10.2f}x")
    a, b = rows["in-trial loop"], rows["TorchTrainer x2"]
    print(f"TorchTrainer start-up and hand-off cost per trial: "
          f"{(b['mean_trial_s'] - b['mean_loop_s']) - (a['mean_trial_s'] - a['mean_loop_s']):.1f} s more "
          "overhead than the in-trial loop")


if __name__ == "__main__":
    main()
