"""The README's first command, cold and warm, against the budgets (cold 10 min with the
installation, 12 min without; warm 4 min).

Exports the repository's committed HEAD into a fresh directory, then runs, with this
interpreter (the project's venv), or with ``--install`` first ``bash install.sh`` there (a fresh
``.venv``, timed) and then that venv's interpreter:

1. cold: ``python -m platform.sweep jobs/quickstart.yaml`` with nothing built: synthetic suite,
   tiny backbones (the released pair installed when the suite matches, else pretrained),
   feature extraction, then the 12-trial sweep;
2. warm: the same command again after removing ``mlflow.db`` and the Ray results (the sweep
   state), so data, backbones and cache exist and the whole sweep runs again.

Prints each stage's seconds (from the command's own log lines and pretrain.json) and each
run's wall time as a share of its budget. Run it on an otherwise idle machine.

    .venv/bin/python benchmarks/bench_quickstart.py [--workdir DIR] [--install] [--warm-only]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLD_BUDGET_S, COLD_WITH_INSTALL_BUDGET_S, WARM_BUDGET_S = 12 * 60, 10 * 60, 4 * 60


def _export_head(dest: Path) -> None:
    tar = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(dest, filter="data")


def _run(workdir: Path, label: str, python: str = sys.executable) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run([python, "-m", "platform.sweep", "jobs/quickstart.yaml"],
                         cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = res.stdout + res.stderr
    (workdir / f"{label}.log").write_text(out)
    if res.returncode != 0:
        raise SystemExit(f"{label} run failed (exit {res.returncode}); see {workdir / (label + '.log')}")
    return wall, out


def _seconds(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--install", action="store_true",
                    help="time `bash install.sh` in the fresh directory and use its venv")
    ap.add_argument("--warm-only", action="store_true",
                    help="skip the cold run (the workdir must hold a previous run's .facefuse)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ffquick"))
    if not args.warm_only:
        if workdir.exists() and any(workdir.iterdir()):
            raise SystemExit(f"{workdir} is not empty; give an empty or new --workdir")
        workdir.mkdir(parents=True, exist_ok=True)
        _export_head(workdir)
    rows = []
    python = sys.executable
    install = None
    if args.install and not args.warm_only:
        t0 = time.perf_counter()
        subprocess.run(["bash", "install.sh"], cwd=workdir, check=True, capture_output=True)
        install = time.perf_counter() - t0
        python = str(workdir / ".venv" / "bin" / "python")
    elif (workdir / ".venv" / "bin" / "python").exists():
        python = str(workdir / ".venv" / "bin" / "python")
    if not args.warm_only:
        wall, out = _run(workdir, "cold", python)
        marker = json.loads((workdir / ".facefuse/backbones/pretrain_done.json").read_text())
        pretrain = workdir / ".facefuse/backbones/pretrain.json"
        backbones = (json.loads(pretrain.read_text())["total_seconds"]
                     if marker.get("source") != "release" and pretrain.exists() else 0.0)
        synth = _seconds(r"built the synthetic suite in (\d+\.?\d*)s", out)
        prepared = _seconds(r"job quickstart prepared in (\d+)s", out)
        sweep = _seconds(r"trials \(\d+ failed\) in (\d+)s", out)
        cache = prepared - (synth or 0) - backbones if prepared is not None else None
        stages = {"synthetic suite": synth,
                  f"tiny backbones ({marker.get('source', 'pretrained')})": backbones,
                  "feature extraction": cache, "sweep (Tune)": sweep}
        rows.append(("cold", wall, COLD_BUDGET_S, stages))
        if install is not None:
            rows.append(("cold with install", wall + install, COLD_WITH_INSTALL_BUDGET_S,
                         {"install.sh (fresh .venv)": install}))
    for stale in ("mlflow.db", "mlflow.optuna.db", ".facefuse/ray_results"):
        p = workdir / stale
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    wall, out = _run(workdir, "warm", python)
    rows.append(("warm", wall, WARM_BUDGET_S, {
        "prepare (all skipped)": _seconds(r"job quickstart prepared in (\d+)s", out),
        "sweep (Tune)": _seconds(r"trials \(\d+ failed\) in (\d+)s", out)}))
    print(f"workdir: {workdir}")
    print("| run | stage | seconds |\n|---|---|---|")
    for label, wall, budget, stages in rows:
        for stage, sec in stages.items():
            print(f"| {label} | {stage} | {sec if sec is None else round(sec)} |")
        print(f"| {label} | **total wall** | **{wall:.0f}** ({wall / budget:.2f} of the "
              f"{budget // 60}-minute budget) |")


if __name__ == "__main__":
    main()
