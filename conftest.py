"""Make plain ``pytest`` see the repository's ``platform`` package (see platform/__init__.py)."""
import os, sys  # noqa: E401
if not hasattr(sys.modules.get("platform"), "__path__"):
    sys.modules.pop("platform", None)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import platform  # noqa: F401,E402
