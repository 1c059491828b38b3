"""Plugin loading and the registry of architectures, losses and datasets.

Plugins are found through the ``ganforge`` entry-point group; the built-in
parts are plugin modules registered the same way (only without an entry point).
Nothing is loaded at import time: the first call to :func:`get_registry` loads.
A plugin that fails to import, has invalid hooks or raises in a hook is kept
out and reported; every other plugin keeps working.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from ganforge import hookspecs
from ganforge.config import TrainConfig
from ganforge.errors import UsageError
from ganforge.hookspecs import KINDS
from ganforge.version import __version__

BUILTIN_PLUGINS = ("ganforge.builtin.architectures", "ganforge.builtin.losses", "ganforge.builtin.datasets",
                   "ganforge.builtin.extractors", "ganforge.builtin.callbacks",
                   "ganforge.builtin.augmentations", "ganforge.builtin.recipes")
DISABLE_ENV = "GANFORGE_DISABLE_PLUGINS"
#: The kind of each plugin part of a run (run.json's providers); ``logger NAME`` parts are callbacks.
PART_KINDS = {"arch": "architectures", "d_arch": "architectures", "loss": "losses", "dataset": "datasets",
              "augmentation": "augmentations", "extractor": "feature_extractors"}


def part_kind(part: str) -> str | None:
    return "callbacks" if part.startswith("logger ") else PART_KINDS.get(part)


@dataclass
class Plugin:
    """One loaded (or failed) plugin and what it provides."""

    name: str
    package: str
    version: str
    builtin: bool = False
    disabled: bool = False
    error: str | None = None
    traceback: str | None = None
    provides: dict = field(default_factory=lambda: {kind: [] for kind in (*KINDS, "recipes")})


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, factory and the plugin that provided it."""

    kind: str
    name: str
    factory: object
    plugin: Plugin

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin.name}:{self.name}"


class Registry:
    def __init__(self, plugins: list, entries: dict, unmatched_disabled: tuple = (), recipes: list = ()):
        self.plugins = plugins
        self._entries = entries  # kind -> name -> [Entry, ...]
        self.recipes = list(recipes)  # ganforge.recipes.Recipe, in the order their plugins loaded
        self.unmatched_disabled = unmatched_disabled  # names asked to be disabled that no plugin has

    def conflicts(self) -> list:
        """``(kind, name, [plugin names])`` for every name that more than one plugin provides."""
        return [(kind, name, [e.plugin.name for e in found]) for kind, by_name in self._entries.items()
                for name, found in sorted(by_name.items()) if len(found) > 1]

    def names(self, kind: str) -> list:
        """Sorted names of a kind (a key of KINDS)."""
        return sorted(self._entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name`` or ``plugin:name``; UsageError if unknown or ambiguous."""
        what = KINDS[kind]
        plugin_name, _, bare = name.rpartition(":")
        found = self._entries[kind].get(bare, [])
        if plugin_name:
            found = [e for e in found if plugin_name in (e.plugin.name, e.plugin.package)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            providers = ", ".join(f"'{e.plugin.name}' ({e.plugin.package})" for e in found)
            choices = " or ".join(f"'{e.qualified_name}'" for e in found)
            raise UsageError(f"{what} '{bare}' is provided by {providers}: pick one with {choices}")
        available = self.names(kind)
        close = difflib.get_close_matches(bare, available, n=1)
        message = f"unknown {what} '{name}'" + (f"; did you mean '{close[0]}'?" if close else ".")
        message += f" Available: {', '.join(available) or 'none'}."
        broken = [p for p in self.plugins if p.error]
        if broken:
            message += " Not loaded: " + "; ".join(f"plugin '{p.name}' ({p.error})" for p in broken) + "."
        raise UsageError(message)

    def create(self, kind: str, name: str, *args, **options):
        """Call the factory of ``name`` with ``args`` and the user's ``options``.

        Options the factory does not take are a UsageError listing the ones it does.
        """
        entry = self.get(kind, name)
        try:
            params = list(inspect.signature(entry.factory).parameters.values())
        except (TypeError, ValueError):
            params = None
        if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = [p.name for p in params[len(args):]]
            for key in options:
                if key not in accepted:
                    takes = ", ".join(accepted) or "none"
                    raise UsageError(f"{KINDS[kind]} '{name}' has no option '{key}'; its options: {takes}")
        return entry.factory(*args, **options)


_disabled_by_cli: set = set()


def disable(names) -> None:
    """Keep exactly these plugins (entry-point or package names) from being imported (``ganforge
    --disable-plugin NAME``), besides those in the environment variable; the registry reloads on next
    use if that changes. Names that match no plugin are in ``Registry.unmatched_disabled``."""
    global _disabled_by_cli
    if set(names) != _disabled_by_cli:
        _disabled_by_cli = set(names)
        set_registry(None)


def disabled_plugins(extra=()) -> set:
    """Plugin names disabled by ``GANFORGE_DISABLE_PLUGINS`` (comma separated), the CLI and ``extra``."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return names | _disabled_by_cli | set(extra)


def parts(cfg: TrainConfig, extractor: str | None = None) -> dict:
    """``{part: (kind, name)}`` for every plugin part a run uses: models, loss, data, the augmentation,
    the ``--logger`` callbacks (``logger NAME``) and the evaluation's feature ``extractor``."""
    names = {"arch": cfg.arch, "d_arch": cfg.d_arch or cfg.arch, "loss": cfg.loss, "dataset": cfg.dataset,
             "augmentation": cfg.augment, **{f"logger {name}": name for name in cfg.loggers}, "extractor": extractor}
    return {part: (part_kind(part), name) for part, name in names.items() if name}


def providers(cfg: TrainConfig, registry=None, extractor: str | None = None) -> dict:
    """Which plugin, package and version provided each part of the run (:func:`parts`)."""
    registry = registry or get_registry()
    out = {}
    for part, (kind, name) in parts(cfg, extractor).items():
        entry = registry.get(kind, name)
        out[part] = {"kind": kind, "name": entry.name, "plugin": entry.plugin.name,
                     "package": entry.plugin.package, "version": entry.plugin.version}
    return out


def in_use(recorded: dict, cfg: TrainConfig) -> dict:
    """The recorded providers (run.json) of the parts a resumed run with ``cfg`` still uses: a logger
    left out with ``--logger``, or an extractor replaced with ``--eval-extractor``, is not needed."""
    used = parts(cfg)

    def needed(part, info) -> bool:
        if part == "extractor":
            return bool(cfg.eval_every) and cfg.eval_extractor in (None, info["name"])
        return part in used

    return {part: info for part, info in recorded.items() if needed(part, info)}


def require(registry: Registry, providers: dict, what: str) -> None:
    """Check that the parts a run recorded (``providers`` from run.json) are there, from the plugin or
    package that provided them; otherwise a UsageError naming the package to install, or saying how to
    re-enable the plugin when it is disabled. ``what`` starts the message, e.g. "resuming runs/x"."""
    for part, info in providers.items():
        kind = info.get("kind") or part_kind(part)  # early runs recorded no kind
        if kind not in KINDS:
            continue
        name = info["name"].rpartition(":")[2]  # a qualified name too
        origin = {info["plugin"], info["package"]}
        if any(origin & {e.plugin.name, e.plugin.package} for e in registry._entries[kind].get(name, [])):
            continue
        needs = (f"{what} needs {KINDS[kind]} '{name}' from package {info['package']} {info['version']} "
                 f"(plugin '{info['plugin']}')")
        off = ([p for p in registry.plugins if p.disabled and p.name == info["plugin"]]
               or [p for p in registry.plugins if p.disabled and p.package == info["package"]])
        if off:
            raise UsageError(f"{needs}, which is disabled: {_how_to_enable(off[0])}")
        raise UsageError(f"{needs}, which is not installed: pip install {info['package']}")


def _how_to_enable(plugin: Plugin) -> str:
    names = {plugin.name, plugin.package}
    env = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",")} & names
    hints = [f"drop --disable-plugin {n}" for n in sorted(names & _disabled_by_cli)]
    if env:
        hints.append(f"remove {' and '.join(sorted(env))} from {DISABLE_ENV}")
    return " and ".join(hints) or "enable it again"


def _call_hooks(pm: pluggy.PluginManager, plugin: Plugin, module, entries: dict, recipes: list) -> None:
    from ganforge.recipes import make

    def mine(caller):
        return [impl for impl in caller.get_hookimpls() if impl.plugin is module]

    for kind in KINDS:
        for impl in mine(getattr(pm.hook, f"register_{kind}")):

            def register(name, factory, kind=kind):
                if not isinstance(name, str) or not name or ":" in name:
                    raise ValueError(f"invalid {KINDS[kind]} name {name!r}")
                if name in plugin.provides[kind]:
                    raise ValueError(f"{KINDS[kind]} '{name}' registered twice")
                plugin.provides[kind].append(name)
                entries[kind].setdefault(name, []).append(Entry(kind, name, factory, plugin))

            impl.function(register)

    def register_recipe(*, dataset=None, loss=None, arch=None, settings=None, source=None):
        recipe = make(plugin, dataset, loss, arch, settings, source)
        if any(r.keys == recipe.keys for r in recipes):
            raise ValueError(f"{recipe.label} registered twice")
        plugin.provides["recipes"].append("+".join(recipe.keys.values()))
        recipes.append(recipe)

    for name, [entry] in entries["datasets"].items():  # the way before register_recipes
        legacy = {None: getattr(entry.factory, "recommended", {}),
                  **getattr(entry.factory, "recommended_with_loss", {})}
        for loss, settings in legacy.items():
            if settings:
                register_recipe(dataset=name, loss=loss, settings=settings,
                                source=f"dataset '{name}': the factory's recommended attributes")
    for impl in mine(pm.hook.register_recipes):
        impl.function(register_recipe)


def load_plugins(disable=(), extra=(), installed: bool = True) -> Registry:
    """Load the built-in plugins, the installed ones (entry points; unless ``installed`` is False)
    and ``extra`` (name, module-or-object) pairs, except the disabled ones."""
    disabled = disabled_plugins(disable)
    pm = pluggy.PluginManager("ganforge")
    pm.add_hookspecs(hookspecs)
    plugins, entries, recipes = [], {kind: {} for kind in KINDS}, []
    candidates = [(name, lambda name=name: importlib.import_module(name), "ganforge", __version__, True)
                  for name in BUILTIN_PLUGINS]
    for ep in sorted(entry_points(group="ganforge") if installed else (), key=lambda ep: ep.name):
        dist = getattr(ep, "dist", None)
        candidates.append((ep.name, ep.load, dist.name if dist else "?", dist.version if dist else "?", False))
    for name, obj in extra:
        candidates.append((name, lambda obj=obj: obj, "(in-process)", "", False))

    for name, load, package, version, builtin in candidates:
        plugin = Plugin(name, package, version, builtin, disabled=bool({name, package} & disabled))
        plugins.append(plugin)
        if plugin.disabled:  # listed, never imported
            continue
        module = None
        try:
            module = load()
            pm.register(module, name=name)
            unknown = [hc.name for hc in pm.get_hookcallers(module) if hc.spec is None]
            if unknown:
                raise pluggy.PluginValidationError(module, f"unknown hook {', '.join(unknown)}")
            staged, staged_recipes = {kind: {} for kind in KINDS}, []
            _call_hooks(pm, plugin, module, staged, staged_recipes)
        except Exception as exc:  # a broken plugin must not take the others down
            plugin.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            plugin.traceback = traceback.format_exc()
            plugin.provides = Plugin("", "", "").provides
            if module is not None and pm.is_registered(module):
                pm.unregister(module)
            continue
        for kind in KINDS:
            for entry_name, found in staged[kind].items():
                entries[kind].setdefault(entry_name, []).extend(found)
        recipes.extend(staged_recipes)
    unmatched = tuple(sorted(disabled - {n for p in plugins for n in (p.name, p.package)}))
    return Registry(plugins, entries, unmatched, recipes)


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_plugins()
    return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (None reloads on next use); for tests and the CLI."""
    global _registry
    _registry = registry


@contextmanager
def plugin_registered(plugin, name: str = "test-plugin"):
    """Register a plugin object (a module or any object with hookimpls) in-process, for tests.

    >>> with plugin_registered(MyPlugin()) as registry:
    ...     registry.get("losses", "my-loss")
    """
    global _disabled_by_cli
    previous, previous_disabled = _registry, _disabled_by_cli  # that registry was loaded with those disabled
    _disabled_by_cli = set()  # else a CLI call without that --disable-plugin would reload without the plugin
    set_registry(load_plugins(extra=[(name, plugin)]))
    try:
        yield get_registry()
    finally:
        set_registry(previous)
        _disabled_by_cli = previous_disabled
