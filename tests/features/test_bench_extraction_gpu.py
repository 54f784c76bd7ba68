"""benchmarks/bench_extraction_gpu.py runs on CPU with tiny sizes, importing neither Ray nor MLflow
(the GPU machine it is written for has neither)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A None entry in sys.modules makes `import ray` raise ImportError: any import of Ray or MLflow
# anywhere in the script's import chain fails the run.
_RUN = """
import runpy, sys
sys.modules["ray"] = None
sys.modules["mlflow"] = None
sys.argv = ["bench_extraction_gpu.py"] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_bench_extraction_gpu_runs_on_cpu_without_ray_or_mlflow(tmp_path: Path) -> None:
    script = str(REPO / "benchmarks" / "bench_extraction_gpu.py")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-c", _RUN.format(script=script), "--device", "cpu", "--arch", "ir_nano",
         "--images", "32", "--shard-size", "16", "--batch-sizes", "16", "--warmup", "1",
         "--threads", "1", "--work", str(tmp_path / "work")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # progress lines for every measured path, then the table row of batch 16 with its ratio
    for what in ("(a) forward only", "(b0) _regroup", "(b) actor path, shards written"):
        assert f"batch 16: {what}" in out, out
    row = re.search(r"^\s+16\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert row is not None, out
    a, b0, b, ratio, _ = (float(v) for v in row.groups())
    assert min(a, b0, b) > 0
    assert abs(ratio - b / a) < 0.01 + 0.01 * ratio
    assert not (tmp_path / "work").exists()  # cleaned up after itself
