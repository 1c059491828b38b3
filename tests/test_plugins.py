"""The plugin registry: built-ins as plugins, in-process plugins, unknown names, conflicts, broken plugins."""
import subprocess
import sys

import pytest

from ganforge import hookimpl
from ganforge.builtin.losses import LeastSquares
from ganforge.errors import UsageError
from ganforge.plugins import get_registry, load_plugins, plugin_registered


class ScaledLSGAN:
    """A plugin object registering one loss and one name clash with a built-in."""

    @hookimpl
    def register_losses(self, register):
        register("scaled-lsgan", LeastSquares)
        register("lsgan", LeastSquares)


class RaisingPlugin:
    @hookimpl
    def register_datasets(self, register):
        register("half-registered", object)
        raise RuntimeError("boom while registering")


class MisspeltHookPlugin:
    @hookimpl
    def register_loses(self, register):
        register("never", object)


class BadSignaturePlugin:
    @hookimpl
    def register_losses(self, register, extra):
        pass


def test_builtins_are_ordinary_plugins(builtins_only):
    registry = get_registry()
    builtins = {p.name: p for p in registry.plugins if p.builtin}
    assert set(builtins) == {"ganforge.builtin.architectures", "ganforge.builtin.losses",
                             "ganforge.builtin.datasets", "ganforge.builtin.extractors", "ganforge.builtin.callbacks",
                             "ganforge.builtin.augmentations", "ganforge.builtin.recipes"}
    assert {"ring", "wgan", "grid+wgan", "mnist"} <= set(builtins["ganforge.builtin.recipes"].provides["recipes"])
    assert registry.names("callbacks") == ["metrics", "progress", "samples", "tensorboard"]
    assert registry.names("augmentations") == ["ada", "diffaugment"]
    assert registry.names("feature_extractors") == ["autoencoder", "classifier", "inception", "raw"]
    assert registry.names("architectures") == ["dcgan", "mlp", "resnet"]
    assert registry.names("losses") == ["bce", "hinge", "lsgan", "minimax", "rpgan", "wgan", "wgan-gp"]
    assert set(registry.names("datasets")) >= {"digits", "mnist", "stacked-mnist", "fashion-mnist", "cifar10",
                                               "folder", "ring", "grid", "gaussian1d"}
    entry = registry.get("losses", "lsgan")
    assert entry.plugin.package == "ganforge" and entry.qualified_name == "ganforge.builtin.losses:lsgan"


def test_each_kind_of_part_is_registered_through_its_own_hook():
    """The kinds are written once, beside the hooks: every kind has its register_<kind> hook, and every hook
    but register_recipes registers a kind; each loaded plugin lists what it provides of every one."""
    from ganforge import hookspecs
    from ganforge.hookspecs import KINDS

    hooks = {name[len("register_"):] for name in vars(hookspecs) if name.startswith("register_")}
    assert hooks == {*KINDS, "recipes"}
    assert all(set(p.provides) == hooks for p in get_registry().plugins)


@pytest.mark.parametrize("kind,name,message", [
    ("losses", "lsgn", "unknown loss 'lsgn'; did you mean 'lsgan'? Available: bce, hinge, lsgan, minimax, "
                       "rpgan, wgan, wgan-gp."),
    ("architectures", "dcgam", "unknown architecture 'dcgam'; did you mean 'dcgan'? Available: dcgan, mlp, resnet."),
    ("architectures", "stylegan", "unknown architecture 'stylegan'. Available: dcgan, mlp, resnet."),
])
def test_unknown_names_list_what_exists_and_the_closest(builtins_only, kind, name, message):
    with pytest.raises(UsageError) as err:
        get_registry().get(kind, name)
    assert str(err.value) == message


def test_in_process_plugin_adds_names_and_conflicts_are_never_silent():
    with plugin_registered(ScaledLSGAN(), name="scaled") as registry:
        assert registry.get("losses", "scaled-lsgan").plugin.name == "scaled"
        with pytest.raises(UsageError) as err:
            registry.get("losses", "lsgan")
        assert str(err.value) == (
            "loss 'lsgan' is provided by 'ganforge.builtin.losses' (ganforge), 'scaled' ((in-process)): "
            "pick one with 'ganforge.builtin.losses:lsgan' or 'scaled:lsgan'")
        assert registry.get("losses", "scaled:lsgan").plugin.name == "scaled"
        assert registry.get("losses", "ganforge:lsgan").plugin.builtin  # the package name qualifies too
    assert get_registry().get("losses", "lsgan").plugin.builtin  # unregistered again afterwards


@pytest.mark.parametrize("plugin,error", [
    (RaisingPlugin(), "RuntimeError: boom while registering"),
    (MisspeltHookPlugin(), "unknown hook register_loses"),
    (BadSignaturePlugin(), "PluginValidationError"),
])
def test_broken_plugin_is_reported_and_isolated(plugin, error):
    registry = load_plugins(extra=[("broken", plugin)])
    broken = next(p for p in registry.plugins if p.name == "broken")
    assert error in broken.error and broken.traceback
    assert broken.provides == {"architectures": [], "losses": [], "datasets": [], "feature_extractors": [],
                               "callbacks": [], "augmentations": [], "recipes": []}
    assert "half-registered" not in registry.names("datasets")  # nothing half-registered
    assert registry.get("losses", "bce")  # the others keep working
    with pytest.raises(UsageError, match=r"Not loaded: plugin 'broken' \("):
        registry.get("losses", "nope")


def test_disabling_plugins_by_environment(monkeypatch):
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "ganforge.builtin.losses, other")
    registry = load_plugins(installed=False)
    assert registry.names("losses") == [] and registry.names("architectures") == ["dcgan", "mlp", "resnet"]
    losses = next(p for p in registry.plugins if p.name == "ganforge.builtin.losses")
    assert losses.disabled and not losses.error  # listed, not imported


def test_importing_ganforge_or_its_cli_does_not_import_torch_or_load_plugins():
    code = ("import sys, ganforge, ganforge.cli, ganforge.plugins; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert ganforge.plugins._registry is None, 'plugins loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_registered_restores_the_disabled_plugins_with_the_registry():
    """The registry it restores was loaded with a CLI call's --disable-plugin names; those come back with it,
    so the next call without them reloads (it used to keep warning about a name no one passed)."""
    from ganforge.plugins import disable

    disable(["no-such-plugin"])
    try:
        assert list(get_registry().unmatched_disabled) == ["no-such-plugin"]
        with plugin_registered(object()):
            disable([])  # a CLI call inside: the test plugin stays
            assert "test-plugin" in [p.name for p in get_registry().plugins]
        disable([])  # the next CLI call without the flag
        assert list(get_registry().unmatched_disabled) == []
    finally:
        disable([])
