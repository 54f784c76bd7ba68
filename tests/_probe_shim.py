"""Collected only when named explicitly: proves the test runner sees the repository's platform."""

import platform


def test_platform_is_the_shim() -> None:
    assert hasattr(platform, "__path__"), platform.__file__
    assert platform.system()
    import platform.prepare  # noqa: F401  (a command module resolves)
