"""Every bad input tried, and the message the user sees.

One table (``CASES``): each case writes a bad file into its own directory (everything else is a
link to the tiny synthetic world), runs the code a command runs on it (the feature-cache fill that
``platform.prepare`` / ``platform.sweep`` do first, the job and search-space checks of
``run_sweep``...), and the test asserts one error whose message names the file and the field, and
that the run left no file behind: the cache directory it was filling stays empty and no temp
file appears next to the inputs. Two commands also run as subprocesses from the repository root:
one line on stderr, a non-zero exit and no traceback.

``python -m tests.test_bad_input docs/troubleshooting.md`` writes the README's troubleshooting
table from the messages these cases really produce.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
import yaml

from facefuse.errors import DataFormatError, FacefuseError

REPO = Path(__file__).resolve().parents[1]
MARKER = "PWNED"  # what the malicious pickles would create if anything in them ran


# --------------------------------------------------------------------------- the per-case world
@dataclass
class Env:
    """One case's directory: ``data`` mirrors the world's data root (links), ``cache`` is empty."""

    tmp: Path
    world: dict[str, Path]
    data: Path = field(init=False)
    cache: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.tmp / "data"
        shutil.copytree(self.world["data"], self.data, copy_function=os.symlink)
        self.cache = self.tmp / "cache"
        self.cache.mkdir()

    def own(self, rel: str) -> Path:
        """Returns data/<rel> as a private copy (not a link) the case may damage."""
        path = self.data / rel
        target = path.resolve()
        path.unlink()
        shutil.copyfile(target, path)
        return path

    def fill_cache(self, dataset: str, arcface: Optional[Path] = None,
                   store: Optional[str] = None, build: bool = True) -> Callable[[], Any]:
        """Returns the operation `platform.prepare` runs for one dataset: fill its store entries
        (``build=False``: what a trial does, read them)."""
        from facefuse.features.dataset import BackbonePair, dataset_maps

        pair = BackbonePair(arcface or self.world["arcface"], self.world["adaface"])
        return lambda: dataset_maps(dataset, self.data, pair, store or self.cache, build=build,
                                    progress=False)

    def job(self, **over: Any) -> Path:
        """Returns a job file over this case's data whose outputs all go under tmp/out."""
        out = self.tmp / "out"
        job: dict[str, Any] = {
            "name": "bad", "data": {"root": str(self.data), "train": "synth_train",
                                    "eval": ["synth_lfw"], "cache_dir": str(self.cache)},
            "backbones": {"arcface": str(self.world["arcface"]),
                          "adaface": str(self.world["adaface"])},
            "search_space": str(REPO / "search_spaces" / "mixed_quality.yaml"),
            "objective": "mean:all", "trials": 2, "epochs": 1,
            "tracking": {"uri": f"sqlite:///{out}/mlflow.db"}, "storage": str(out / "results"),
        }
        job.update(over)
        path = self.tmp / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        return path


def run_job(path: Path) -> Callable[[], Any]:
    """Returns what `python -m platform.sweep JOB` does up to the first trial."""
    def op() -> Any:
        from facefuse.pipeline import prepare_job
        from facefuse.sweep import run_sweep

        job, _ = prepare_job(path, cwd=path.parent, build_cache=False)
        return run_sweep(job)  # a bad search space is refused before Ray starts
    return op


@dataclass
class Expect:
    """What a case runs and what its error must say."""

    op: Callable[[], Any]
    file: Optional[Path | str]  # the path the message must name (None: in-memory arrays; a str:
    # a URI the message starts with)
    field: str  # must appear as "[field...]"
    text: str  # a phrase of the message
    error: type = DataFormatError


@dataclass
class Case:
    id: str
    what: str  # the input, for the troubleshooting table
    make: Callable[[Env], Expect]


# --------------------------------------------------------------------------- the bad inputs
class _RunsCode:
    """Unpickling this calls os.system: the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class CustomObject:
    """A class torch.load would have to import to rebuild the checkpoint."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def bin_truncated(env: Env) -> Expect:
    path = env.own("faces_synth/synth_lfw.bin")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return Expect(env.fill_cache("synth_lfw"), path, "pickle byte", "truncated or corrupt pickle")


def bin_corrupt_image(env: Env) -> Expect:
    path = env.own("faces_synth/synth_lfw.bin")
    with open(path, "rb") as fh:
        bins, issame = pickle.load(fh, encoding="bytes")
    bins[3] = b"\xff\xd8\xff\xe0 this is not a JPEG any more"
    path.write_bytes(pickle.dumps((bins, issame), protocol=4))
    return Expect(env.fill_cache("synth_lfw"), path, "bins[3]", "cannot decode image")


def bin_runs_code(env: Env) -> Expect:
    path = env.own("faces_synth/synth_lfw.bin")
    path.write_bytes(pickle.dumps(([_RunsCode(env.tmp / MARKER)], [True]), protocol=4))
    return Expect(env.fill_cache("synth_lfw"), path, "posix.system", "refused, nothing was run")


def bin_empty(env: Env) -> Expect:
    path = env.own("faces_synth/synth_lfw.bin")
    path.write_bytes(pickle.dumps(([], []), protocol=4))
    return Expect(env.fill_cache("synth_lfw"), path, "images", "has no images")


def rec_truncated(env: Env) -> Expect:
    path = env.own("faces_synth/train.rec")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return Expect(env.fill_cache("synth_train"), path, "offset ", "truncated record")


def rec_corrupt(env: Env) -> Expect:
    path = env.own("faces_synth/train.rec")
    offsets = dict(line.split("\t") for line in
                   (env.data / "faces_synth/train.idx").read_text().splitlines())
    off = int(offsets["50"])
    with open(path, "r+b") as fh:  # overwrite record 50's magic word
        fh.seek(off)
        fh.write(struct.pack("<I", 0xDEADBEEF))
    return Expect(env.fill_cache("synth_train"), path, f"offset {off}", "bad magic 0xdeadbeef")


def rec_empty(env: Env) -> Expect:
    for name in ("train.rec", "train.idx"):
        (env.data / "faces_synth" / name).unlink()
        (env.data / "faces_synth" / name).write_bytes(b"")
    return Expect(env.fill_cache("synth_train"), env.data / "faces_synth", "images", "has no images")


def imagefolder_empty(env: Env) -> Expect:
    from facefuse.data import ImageFolderDataset

    root = env.tmp / "faces"
    root.mkdir()
    return Expect(lambda: ImageFolderDataset(root), root, "identity folders",
                  "no identity sub-folders")


def imagefolder_identity_without_images(env: Env) -> Expect:
    from facefuse.data import ImageFolderDataset

    root = env.tmp / "faces"
    (root / "alice").mkdir(parents=True)
    return Expect(lambda: ImageFolderDataset(root), root / "alice", "images",
                  "identity folder has no")


def ckpt_custom_object(env: Env) -> Expect:
    path = env.tmp / "arcface.pth"
    torch.save({"model": CustomObject()}, path)
    return Expect(env.fill_cache("synth_lfw", arcface=path), path, "pickle",
                  "needs arbitrary unpickling of the global ")


def ckpt_runs_code(env: Env) -> Expect:
    path = env.tmp / "arcface.pth"
    torch.save({"weights": torch.zeros(2), "payload": _RunsCode(env.tmp / MARKER)}, path)
    return Expect(env.fill_cache("synth_lfw", arcface=path), path, "pickle",
                  "needs arbitrary unpickling of the global posix.system")


def ckpt_wrong_architecture(env: Env) -> Expect:
    path = env.tmp / "arcface.pth"
    torch.save({"encoder.conv.weight": torch.randn(8, 3, 3, 3),
                "head.fc.weight": torch.randn(10, 8)}, path)
    return Expect(env.fill_cache("synth_lfw", arcface=path), path, "state_dict",
                  "neither the insightface nor the AdaFace IResNet layout")


IJBB_META = "IJB_synth/SYNTH_IJBB/meta"


def _edit_line(path: Path, lineno: int, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = " ".join(edit(lines[lineno - 1].split()))
    path.write_text("\n".join(lines) + "\n")


def ijb_missing_column(env: Env) -> Expect:
    path = env.own(f"{IJBB_META}/synth_ijbb_face_tid_mid.txt")
    _edit_line(path, 3, lambda f: f[:2])  # media_id gone
    return Expect(env.fill_cache("synth_ijbb"), path, "line 3", "2 columns, expected 3")


def ijb_missing_score(env: Env) -> Expect:
    path = env.own(f"{IJBB_META}/synth_ijbb_name_5pts_score.txt")
    _edit_line(path, 2, lambda f: f[:11])  # detector score gone
    return Expect(env.fill_cache("synth_ijbb"), path, "line 2", "11 columns, expected exactly 12")


def ijb_template_without_images(env: Env) -> Expect:
    path = env.own(f"{IJBB_META}/synth_ijbb_template_pair_label.txt")
    n = len(path.read_text().splitlines())
    with open(path, "a") as fh:
        fh.write("1 99999 0\n")
    return Expect(env.fill_cache("synth_ijbb"), path, f"line {n + 1}, template_id_2",
                  "template 99999 has no images")


def eval_template_without_images(env: Env) -> Expect:
    from facefuse.evaluation import ijb_scores

    feats = np.random.default_rng(0).normal(size=(4, 8))
    return Expect(lambda: ijb_scores(feats, np.ones(4), [1, 1, 2, 2], [1, 1, 2, 2], [1, 7], [2, 2]),
                  None, "p1", "p1 row 1 names template 7, which has no images")


def ijb_landmarks_outside(env: Env) -> Expect:
    path = env.own(f"{IJBB_META}/synth_ijbb_name_5pts_score.txt")
    _edit_line(path, 5, lambda f: [f[0], "5000", *f[2:]])
    return Expect(env.fill_cache("synth_ijbb"), path, "line 5, x1/y1", "lies outside its")


def job_unknown_key(env: Env) -> Expect:
    path = env.job(trails=4)
    return Expect(run_job(path), path, "trails", "did you mean trials?", FacefuseError)


def job_wrong_type(env: Env) -> Expect:
    path = env.job(epochs="three")
    return Expect(run_job(path), path, "epochs", "epochs must be an integer, got 'three'",
                  FacefuseError)


def job_unknown_param(env: Env) -> Expect:
    path = env.job(params={"betta": 0.1})
    return Expect(run_job(path), path, "params.betta", "did you mean params.beta?", FacefuseError)


def job_gpu_fraction_above_one(env: Env) -> Expect:
    path = env.job(resources={"gpus_per_worker": 1.5})
    return Expect(run_job(path), path, "resources.gpus_per_worker",
                  "above 1 it must be a whole number", FacefuseError)


def space_empty_range(env: Env) -> Expect:
    space = env.tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {
        "beta": {"distribution": "loguniform", "low": 0.1, "high": 0.001}}}))
    return Expect(run_job(env.job(search_space=str(space))), space, "params.beta",
                  "empty range: low=0.1 >= high=0.001", FacefuseError)


def space_mix_outside(env: Env) -> Expect:
    space = env.tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {
        "mix": {"distribution": "categorical", "choices": ["learned", 1.5]}}}))
    return Expect(run_job(env.job(search_space=str(space))), space, "params.mix.choices",
                  "mix takes numbers in [0, 1] or 'learned'; got [1.5]", FacefuseError)


def job_mix_unknown_word(env: Env) -> Expect:
    path = env.job(params={"mix": "learnt"})
    return Expect(run_job(path), path, "params.mix", "mix takes numbers in [0, 1] or 'learned'",
                  FacefuseError)


def job_quality_unknown_measure(env: Env) -> Expect:
    path = env.job(selection={"quality": "brisque"})
    return Expect(run_job(path), path, "selection.quality", "unknown quality measure 'brisque'",
                  FacefuseError)


def ladder_level_missing(env: Env) -> Expect:
    return Expect(env.fill_cache("synth_q2"), env.data / "faces_synth_ladder" / "synth_q2.bin",
                  "synth_q2", "prepare synth --out <data root> --ladder")


# ---- feature stores: s3:// on a real S3-compatible server (moto) on loopback, and local
_MOTO: dict[str, Any] = {}


def _moto() -> str:
    """Returns the URL of this process's moto server (started once, stopped at exit)."""
    if "url" not in _MOTO:
        import atexit
        import socket

        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        atexit.register(server.stop)
        _MOTO["url"] = f"http://127.0.0.1:{port}"
    return _MOTO["url"]


def _with_env(op: Callable[[], Any], **env: Optional[str]) -> Callable[[], Any]:
    """Returns ``op`` run with the AWS environment ``env`` (None: unset), restored after."""
    def apply(values: dict[str, Optional[str]]) -> None:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def run() -> Any:
        saved = {k: os.environ.get(k) for k in env}
        try:
            apply(env)
            return op()
        finally:
            apply(saved)
    return run


_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_PROFILE": None}


def store_unreachable(env: Env) -> Expect:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = "s3://features/facefuse"
    op = _with_env(env.fill_cache("synth_lfw", store=uri), **_KEYS,
                   AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    return Expect(op, uri, "endpoint", "is unreachable")


def store_missing_bucket(env: Env) -> Expect:
    uri = "s3://no-such-bucket/features"
    op = _with_env(env.fill_cache("synth_lfw", store=uri), **_KEYS, AWS_ENDPOINT_URL=_moto())
    return Expect(op, uri, "bucket", "bucket 'no-such-bucket' does not exist")


def store_missing_credentials(env: Env) -> Expect:
    uri = "s3://features/facefuse"
    op = _with_env(env.fill_cache("synth_lfw", store=uri), AWS_ACCESS_KEY_ID=None,
                   AWS_SECRET_ACCESS_KEY=None, AWS_SESSION_TOKEN=None, AWS_PROFILE=None,
                   AWS_SHARED_CREDENTIALS_FILE=str(env.tmp / "no-credentials"),
                   AWS_CONFIG_FILE=str(env.tmp / "no-config"), AWS_ENDPOINT_URL=_moto())
    return Expect(op, uri, "credentials", "no AWS credentials")


def store_shard_gone(env: Env) -> Expect:
    env.fill_cache("synth_lfw")()  # a complete entry, as `prepare features` leaves it
    shard = sorted(env.cache.rglob("shard-00000.npy"))[0]
    shard.unlink()  # the manifest still names it
    return Expect(env.fill_cache("synth_lfw", build=False), env.cache, "synth_lfw",
                  "shard 0 of 1 recorded but gone or incomplete")


def store_missing_entry(env: Env) -> Expect:
    return Expect(env.fill_cache("synth_lfw", build=False), env.cache, "synth_lfw",
                  "no complete feature entry for dataset synth_lfw (orig, checkpoint")


def ijb_name_climbs_out(env: Env) -> Expect:
    path = env.own(f"{IJBB_META}/synth_ijbb_face_tid_mid.txt")
    _edit_line(path, 3, lambda f: ["../../outside.jpg", *f[1:]])
    return Expect(env.fill_cache("synth_ijbb"), path, "line 3, image_name",
                  "is absolute or leaves loose_crop/")


CASES = [
    Case("bin_truncated", "verification .bin cut in half", bin_truncated),
    Case("bin_corrupt_image", ".bin whose 4th encoded image is garbage", bin_corrupt_image),
    Case("bin_runs_code", ".bin pickle that calls os.system when loaded", bin_runs_code),
    Case("bin_empty", ".bin with no pairs", bin_empty),
    Case("rec_truncated", "train.rec cut in half", rec_truncated),
    Case("rec_corrupt", "train.rec with a record's magic word overwritten", rec_corrupt),
    Case("rec_empty", "empty train.rec / train.idx (0 images)", rec_empty),
    Case("imagefolder_empty", "image folder with no identity folders", imagefolder_empty),
    Case("imagefolder_identity_without_images", "image folder identity without images",
         imagefolder_identity_without_images),
    Case("ckpt_custom_object", "backbone checkpoint holding a custom class (torch.save(obj))",
         ckpt_custom_object),
    Case("ckpt_runs_code", "backbone checkpoint that calls os.system when unpickled",
         ckpt_runs_code),
    Case("ckpt_wrong_architecture", "backbone checkpoint of another architecture",
         ckpt_wrong_architecture),
    Case("ijb_missing_column", "IJB face_tid_mid line without media_id", ijb_missing_column),
    Case("ijb_missing_score", "IJB 5pts_score line without the detector score", ijb_missing_score),
    Case("ijb_template_without_images", "IJB pair naming a template with no images",
         ijb_template_without_images),
    Case("eval_template_without_images", "ijb_scores(...) pair naming a template with no images",
         eval_template_without_images),
    Case("ijb_landmarks_outside", "IJB landmark outside its loose crop", ijb_landmarks_outside),
    Case("job_unknown_key", "job file with an unknown key (trails:)", job_unknown_key),
    Case("job_wrong_type", "job file with a wrong type (epochs: three)", job_wrong_type),
    Case("job_unknown_param", "job file params naming no setting (params.betta)",
         job_unknown_param),
    Case("job_gpu_fraction_above_one", "job file with 1.5 GPUs per worker",
         job_gpu_fraction_above_one),
    Case("space_empty_range", "search space with an empty range (low > high)", space_empty_range),
    Case("space_mix_outside", "search space with a local/global weight outside [0, 1]",
         space_mix_outside),
    Case("job_mix_unknown_word", "job file params.mix neither a weight nor 'learned'",
         job_mix_unknown_word),
    Case("job_quality_unknown_measure", "job file selection.quality naming no quality measure",
         job_quality_unknown_measure),
    Case("ladder_level_missing", "a quality-ladder level (synth_q2) under a data root without "
         "the ladder", ladder_level_missing),
    Case("store_unreachable", "feature store `s3://...` whose endpoint does not answer",
         store_unreachable),
    Case("store_missing_bucket", "feature store in a bucket that does not exist",
         store_missing_bucket),
    Case("store_missing_credentials", "feature store `s3://...` with no AWS credentials",
         store_missing_credentials),
    Case("store_shard_gone", "feature store whose manifest names a shard that is gone (trial read)",
         store_shard_gone),
    Case("store_missing_entry", "feature store without the job's entries (trial read)",
         store_missing_entry),
    Case("ijb_name_climbs_out", "IJB image name climbing out of loose_crop/ with `..`",
         ijb_name_climbs_out),
]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def run_case(case: Case, tmp: Path, world: dict[str, Path]) -> tuple[BaseException, Expect]:
    """Returns (the error raised, the expectation) after running one case in tmp."""
    env = Env(tmp, world)
    expect = case.make(env)
    before = _files(tmp)
    try:
        expect.op()
    except BaseException as exc:  # noqa: BLE001 - the type is checked by the caller
        after = _files(tmp)
        assert after == before, f"left behind: {sorted(after - before)}, removed: {sorted(before - after)}"
        return exc, expect
    raise AssertionError(f"{case.id}: no error raised")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_message(case: Case, tmp_path: Path,
                                           world: dict[str, Path]) -> None:
    exc, expect = run_case(case, tmp_path, world)
    assert isinstance(exc, expect.error), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    if isinstance(expect.file, str):
        assert msg.startswith(expect.file), msg  # names the store's URI first
    elif expect.file is not None:
        assert msg.startswith(f"{expect.file}:"), msg  # names the file first
    assert f"[{expect.field}" in msg, msg  # and the field
    assert expect.text in msg, msg
    assert " -- " in msg, msg  # and what to do
    assert "\n" not in msg and len(msg) < 1000, msg
    assert not (tmp_path / MARKER).exists()  # nothing in a pickle ran


# --------------------------------------------------------------------------- commands
def _command(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    before = set(os.listdir(REPO))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    created = (set(os.listdir(REPO)) - before) & {"mlflow.db", "mlruns", "mlartifacts", ".facefuse"}
    assert not created, created
    return proc


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def empty_store(tmp: Path) -> str:
    """Returns the URI of an sqlite store holding one experiment ('empty') and no runs."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp}/empty.db"
    MlflowClient(uri).create_experiment("empty")
    return uri


def test_best_beta_without_runs_says_so_in_one_line(tmp_path: Path) -> None:
    uri = empty_store(tmp_path)
    before = _files(tmp_path)
    proc = _command(["platform.best_beta", "--dataset", "synth_lfw", "--experiment", "empty",
                     "--tracking-uri", uri], tmp_path / "home")
    line = _one_line(proc)
    assert proc.returncode == 2 and proc.stdout == ""
    assert line.startswith("error: no finished trial run in experiment 'empty'")
    assert f"{tmp_path}/empty.db" in line and "synth_lfw/acc" in line and " -- " in line
    assert {p for p in _files(tmp_path) - before if not p.startswith("home/")} == set()


def test_best_beta_without_a_store_creates_none(tmp_path: Path) -> None:
    proc = _command(["platform.best_beta", "--dataset", "synth_lfw", "--tracking-uri",
                     f"sqlite:///{tmp_path}/empty.db"], tmp_path / "home")
    line = _one_line(proc)
    assert proc.returncode == 2
    assert line.startswith(f"error: no MLflow tracking store at {tmp_path}/empty.db")
    assert "--tracking-uri" in line
    assert not (tmp_path / "empty.db").exists()


def test_sweep_command_refuses_a_bad_job_in_one_line(tmp_path: Path,
                                                     world: dict[str, Path]) -> None:
    path = Env(tmp_path, world).job(trails=4)
    before = _files(tmp_path)
    proc = _command(["platform.sweep", str(path)], tmp_path / "home")
    line = _one_line(proc)
    assert proc.returncode == 2
    assert line == (f"error: {path}: [trails] unknown key 'trails' -- did you mean trials?")
    assert not (tmp_path / "out").exists()
    assert {p for p in _files(tmp_path) - before if not p.startswith("home/")} == set()


# --------------------------------------------------------------------------- beta selection
def selection_lines(tmp: Path) -> list[tuple[str, str, str]]:
    """Returns (input, message, fix) of the selection inputs that cannot give a trustworthy beta.

    Real calls: best_beta on a store whose trials did not log the selection split, best_beta on
    a sweep too small to fit the curve, and the split of a set with too few subjects.
    """
    from facefuse.evaluation.splits import ijb_parts
    from facefuse.selection import select_beta
    from facefuse.stats import SimConfig, simulate_sweep, write_sweep_to_mlflow

    rows = []
    for what, cfg, split, start in [
            ("`best_beta` on trials that did not log the selection split (stores of earlier "
             "versions)", SimConfig(n_trials=30), False, "the trials did not log"),
            ("`best_beta` on a sweep too small for the curve", SimConfig(n_trials=4), True,
             "sweep too small")]:
        uri = f"sqlite:///{tmp}/{'legacy' if not split else 'tiny'}.db"
        write_sweep_to_mlflow(simulate_sweep(cfg, 31), uri, "sel", "lfw", "acc", split=split)
        verdict = select_beta(uri, "lfw").verdict
        assert start in verdict, verdict
        msg, _, fix = verdict[verdict.index(start):].partition(" -- ")
        rows.append((what, f"verdict: {msg}", fix.split("; ")[0]))
    genuine = np.arange(3)  # three subjects: one genuine pair each
    try:
        ijb_parts(genuine, genuine + 10, np.ones(3, dtype=int))
    except DataFormatError as exc:
        msg, _, fix = str(exc).partition(" -- ")
        rows.append(("an evaluation set too small to split into selection and report parts",
                     f"warning synth_ijbc: not split into selection/report parts: {msg}", fix))
    return rows


def test_selection_inputs_say_what_to_run(tmp_path: Path) -> None:
    rows = selection_lines(tmp_path)
    assert [r[0][:12] for r in rows] == ["`best_beta` ", "`best_beta` ", "an evaluatio"]
    for what, msg, fix in rows:
        assert "\n" not in msg and fix, (what, msg)
    assert "did not log the selection part (lfw/sel/acc)" in rows[0][1]
    assert "rerun the sweep" in rows[0][2]
    assert "sweep too small to fit the curve" in rows[1][1] and "confirm_top" in rows[1][2]
    assert "cannot be split" in rows[2][1] and "validation sets" in rows[2][2]


# --------------------------------------------------------------------------- the README table
def _short(text: str, limit: int = 230) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_troubleshooting(out: Path) -> None:
    """Writes the troubleshooting table from the messages the cases really produce."""
    import tempfile

    from tests.conftest import TINY_SUITE

    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.synth import build_suite

    with tempfile.TemporaryDirectory(prefix="facefuse-badinput-") as d:
        base = Path(d)
        build_suite(base / "world" / "data", seed=3, workers=1, progress=False, **TINY_SUITE)
        torch.manual_seed(0)
        world = {"data": base / "world" / "data", "arcface": base / "world" / "arcface.pth",
                 "adaface": base / "world" / "adaface.ckpt"}
        save_insightface(get_model("ir_tiny", widths=(4, 8, 12, 16), num_features=32),
                         world["arcface"])
        save_adaface(get_model("ir_tiny", widths=(4, 8, 16, 32), num_features=32,
                               layout="adaface"), world["adaface"])
        rows = []
        for i, case in enumerate(CASES):
            tmp = base / f"case{i}"
            tmp.mkdir()
            exc, _ = run_case(case, tmp, world)
            msg = str(exc).replace(f"{tmp}/data/", "").replace(f"{tmp}/", "")
            what, _, fix = msg.partition(" -- ")
            rows.append((case.what, f"error: {_short(what)}", fix or "-"))
        home = base / "home"
        uri = empty_store(base)
        proc = _command(["platform.best_beta", "--dataset", "synth_lfw", "--experiment", "empty",
                         "--tracking-uri", uri], home)
        line = _one_line(proc).replace(f"{base}/", "")
        what, _, fix = line.partition(" -- ")
        rows.append(("`best_beta` on an experiment without runs", _short(what), fix))
        proc = _command(["platform.best_beta", "--dataset", "synth_lfw", "--tracking-uri",
                         f"sqlite:///{base}/none.db"], home)
        line = _one_line(proc).replace(f"{base}/", "")
        what, _, fix = line.partition(" -- ")
        rows.append(("`best_beta` with no tracking store", _short(what), fix))
        rows += [(w, _short(m), f) for w, m, f in selection_lines(base)]
    # ports of the loopback S3 servers change from run to run
    rows = [tuple(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", c) for c in r) for r in rows]
    lines = [
        "<!-- generated by `python -m tests.test_bad_input docs/troubleshooting.md`; "
        "tests/test_bad_input.py checks every row -->",
        "",
        "Every message names the file first, then the field in brackets, then the fix after "
        "`--`. Commands print it as one line on stderr and exit with status 2; nothing is left "
        "half-written (cache entries, temp files).",
        "",
        "| input | what the user sees | fix |",
        "|---|---|---|",
    ]
    lines += [f"| {_cell(a)} | `{_cell(b)}` | {_cell(c)} |" for a, b, c in rows]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    write_troubleshooting(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/troubleshooting.md"))
