"""The ``platform`` package is a superset of the standard library's ``platform`` module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import json, platform\n"
    "print(json.dumps({'is_shim': hasattr(platform, '__path__'), 'system': platform.system(),"
    " 'machine': platform.machine(), 'python_version': platform.python_version(),"
    " 'uname': list(platform.uname()), 'platform': platform.platform(),"
    " 'release': platform.release(), 'node': platform.node(),"
    " 'processor': platform.processor(), 'architecture': list(platform.architecture()),"
    " 'libc_ver': list(platform.libc_ver()), 'python_implementation': platform.python_implementation()}))\n"
)


def _run(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_standard_functions_match_the_standard_module(tmp_path: Path) -> None:
    # -c puts the cwd first on sys.path, exactly like `python -m platform.x` from the root.
    ours = _run("import torch, ray, mlflow\n" + PROBE, ROOT)
    assert ours.returncode == 0, ours.stderr
    std = _run(PROBE, tmp_path)
    assert std.returncode == 0, std.stderr
    got, want = json.loads(ours.stdout.splitlines()[-1]), json.loads(std.stdout)
    assert got.pop("is_shim") is True
    assert want.pop("is_shim") is False
    assert got == want


def test_every_public_name_of_the_standard_module_is_there() -> None:
    code = ("import platform, importlib.util, sysconfig, os\n"
            "spec = importlib.util.spec_from_file_location('_std_platform', "
            "os.path.join(sysconfig.get_paths()['stdlib'], 'platform.py'))\n"
            "std = importlib.util.module_from_spec(spec); spec.loader.exec_module(std)\n"
            "missing = [n for n in dir(std) if not n.startswith('_') and not hasattr(platform, n)]\n"
            "assert not missing, missing\nprint('ok')\n")
    res = _run(code, ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_uuid_and_pandas_import_through_the_shim() -> None:
    res = _run("import uuid, pandas, platform; assert hasattr(platform, '__path__');"
               " print(uuid.uuid4().version)", ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "4"


def test_submodule_named_like_a_standard_function_is_refused(tmp_path: Path) -> None:
    pkg = tmp_path / "platform"
    pkg.mkdir()
    shutil.copy(ROOT / "platform" / "__init__.py", pkg / "__init__.py")
    (pkg / "version.py").write_text("X = 1\n")
    res = _run("import platform", tmp_path)
    assert res.returncode != 0
    assert "version.py" in res.stderr and "platform.version" in res.stderr


def test_no_command_module_shadows_a_standard_name() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        import platform as shim
    finally:
        sys.path.pop(0)
    assert hasattr(shim, "STANDARD_NAMES")
    for entry in (ROOT / "platform").iterdir():
        assert entry.stem not in shim.STANDARD_NAMES, entry


def _commands() -> list[str]:
    return sorted(p.stem for p in (ROOT / "platform").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command: str) -> None:
    res = subprocess.run([sys.executable, "-m", f"platform.{command}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()


@pytest.mark.parametrize("runner", ["pytest", "python -m pytest"])
def test_plain_pytest_and_module_pytest_both_see_the_shim(runner: str) -> None:
    exe = Path(sys.executable).parent
    cmd = [str(exe / "pytest")] if runner == "pytest" else [sys.executable, "-m", "pytest"]
    env = dict(os.environ, PYTEST_ADDOPTS="")
    res = subprocess.run(cmd + ["-q", "-p", "no:cacheprovider", "tests/_probe_shim.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout
