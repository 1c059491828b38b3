import sys

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


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site directory on sys.path into which `install` puts plugin packages: a module and a
    *.dist-info with entry_points.txt, exactly what `pip install` leaves behind. ``install.root`` is the
    directory (for PYTHONPATH in subprocesses)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    installed = []
    set_registry(None)

    def install(dist, entry_name, module, source, version="1.0"):
        (root / f"{module}.py").write_text(source)
        installed.append(module)
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[ganforge]\n{entry_name} = {module}\n")
        set_registry(None)

    install.root = root
    yield install
    set_registry(None)
    for module in installed:
        sys.modules.pop(module, None)
