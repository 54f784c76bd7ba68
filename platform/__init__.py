"""The standard library's ``platform`` module, extended with facefuse's commands.

Run from the repository root, ``python -m platform.sweep`` puts ``./platform`` ahead of the
standard library on ``sys.path``, so this package *replaces* the standard ``platform`` module
for the whole process (torch, ray, mlflow, pandas and ``uuid`` all import it). To keep them
working, this file executes the standard library's ``platform.py`` into its own namespace and
then exposes the command submodules (``platform.sweep``, ``platform.best_beta``, ...).

A submodule whose name is a public attribute of the standard module (``version.py``,
``system.py``...) would overwrite that function when imported, so such names are refused here.
Nothing that Ray pickles may live in this package: workers started without a runtime_env hold
the standard module (docs/architecture.md, "Why platform/ carries the standard module").
"""

import os as _os
import sysconfig as _sysconfig

_STDLIB_PLATFORM = _os.path.join(_sysconfig.get_paths()["stdlib"], "platform.py")

with open(_STDLIB_PLATFORM, "rb") as _fh:
    _code = compile(_fh.read(), _STDLIB_PLATFORM, "exec")
exec(_code, globals())  # noqa: S102 - the interpreter's own standard library file
del _fh, _code

#: Public names of the standard module; a submodule must not shadow any of them.
STANDARD_NAMES = frozenset(n for n in list(globals()) if not n.startswith("_"))


def _refuse_shadowing_submodules() -> None:
    here = _os.path.dirname(_os.path.abspath(__file__))
    for entry in _os.listdir(here):
        if entry.startswith(("_", ".")):
            continue
        if entry.endswith(".py"):
            name = entry[:-3]
        elif _os.path.isdir(_os.path.join(here, entry)):
            name = entry
        else:
            continue
        if name in STANDARD_NAMES:
            raise ImportError(
                f"{_os.path.join(here, entry)}: a submodule named {name!r} would replace the "
                f"standard function platform.{name}; rename the command module "
                f"(for example to {name}_cmd.py)."
            )


_refuse_shadowing_submodules()
