"""Collected only when named explicitly: proves the test runner sees the repository's platform."""

import importlib
import platform


def test_platform_is_the_shim() -> None:
    assert hasattr(platform, "__path__"), platform.__file__
    assert platform.system()
    assert importlib.import_module("platform.prepare").main  # a command module resolves
