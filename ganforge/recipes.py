"""Recipes: training settings that plugins register for the runs they suit (``register_recipes``).

A recipe names a dataset, a loss and/or an architecture, and applies to a run that has all of them.
Every recipe that applies is a layer of the run's config (:func:`ganforge.layering.build`), the more
specific ones over the less specific: by the number of keys named, then a loss over a dataset (a
method's learning rate over a dataset's), then an architecture. Recipes as specific as each other
apply in the order their plugins load (the built-in ones first), so a third-party recipe wins over
a built-in one for the same run; ``ganforge recipes`` and ``--print-config`` show who set what.
"""
from __future__ import annotations

from dataclasses import dataclass

from ganforge.config import check_value
from ganforge.errors import UsageError

KEYS = ("dataset", "loss", "arch")


@dataclass(frozen=True)
class Recipe:
    dataset: str | None
    loss: str | None
    arch: str | None
    settings: dict
    source: str  # what justifies the settings: a benchmark row, a paper
    plugin: object  # the ganforge.plugins.Plugin that registered it

    @property
    def keys(self) -> dict:
        return {key: getattr(self, key) for key in KEYS if getattr(self, key) is not None}

    @property
    def specificity(self) -> tuple:
        return len(self.keys), self.loss is not None, self.arch is not None

    @property
    def label(self) -> str:
        """``recipe 'ring+wgan'``, and ``(plugin NAME)`` when it is not built in."""
        name = "+".join(self.keys.values())
        return f"recipe '{name}'" + ("" if self.plugin.builtin else f" (plugin {self.plugin.name})")

    def matches(self, run: dict) -> bool:
        return all(run.get(key) == value for key, value in self.keys.items())

    def record(self) -> dict:
        """What run.json keeps of it."""
        return {**self.keys, "plugin": self.plugin.name, "package": self.plugin.package,
                "version": self.plugin.version, "source": self.source}


def make(plugin, dataset=None, loss=None, arch=None, settings=None, source=None) -> Recipe:
    """A checked recipe; a ValueError (the plugin is then reported as not loaded) when malformed."""
    for key, value in (("dataset", dataset), ("loss", loss), ("arch", arch)):
        if value is not None and (not isinstance(value, str) or not value or ":" in value):
            raise UsageError(f"recipe {key} must be a registered name without a plugin prefix, got {value!r}")
    if dataset is loss is arch is None:
        raise UsageError("a recipe names a dataset, a loss or an arch it is for")
    if not isinstance(source, str) or not source.strip():
        raise UsageError("a recipe needs a source: the benchmark or paper its settings come from")
    if not isinstance(settings, dict) or not settings:
        raise UsageError(f"recipe settings must be a non-empty dict of training settings, got {settings!r}")
    recipe = Recipe(dataset, loss, arch, dict(settings), source, plugin)
    for key in ("dataset", "loss", *(("arch",) if arch else ())):
        if key in settings:
            raise UsageError(f"{recipe.label} cannot set {key}: it selects runs by it")
    checked = {key: check_value(key, value, recipe.label) for key, value in settings.items()}
    return Recipe(dataset, loss, arch, checked, source, plugin)


def applying(recipes, dataset: str, loss: str, arch: str | None, default_arch: str) -> list:
    """The recipes that apply to a run of ``dataset`` with ``loss`` (bare names), lowest first; the
    architecture is ``arch`` (the user's, bare) or else the one the other recipes pick, or
    ``default_arch``."""
    run = {"dataset": dataset, "loss": loss}
    chosen = sorted((r for r in recipes if r.arch is None and r.matches(run)), key=lambda r: r.specificity)
    if arch is None:
        arch = next((r.settings["arch"] for r in reversed(chosen) if "arch" in r.settings), default_arch)
    run["arch"] = arch.rpartition(":")[2]
    return sorted((r for r in recipes if r.matches(run)), key=lambda r: r.specificity)


def used(cfg, registry) -> list:
    """The recipes that applied to a run with config ``cfg``, as run.json records them."""
    dataset, loss = registry.get("datasets", cfg.dataset).name, registry.get("losses", cfg.loss).name
    return [r.record() for r in applying(registry.recipes, dataset, loss, cfg.arch, cfg.arch)]
