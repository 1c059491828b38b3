import pytest

from ganforge.plugins import load_plugins, set_registry


@pytest.fixture
def builtins_only():
    """Only the built-in plugins, whatever else is installed (for tests that list exact names)."""
    set_registry(load_plugins(installed=False))
    try:
        yield
    finally:
        set_registry(None)
