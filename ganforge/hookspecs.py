"""The hooks a ganforge plugin can implement.

Each hook receives a ``register(name, factory)`` callback. The factory contracts
are documented in :mod:`ganforge.interfaces` and docs/plugins.md.
"""
import pluggy

#: Version of this hook API. New hooks and new optional attributes keep it; changing or removing
#: a hook or a contract raises it, together with ganforge's major version.
API_VERSION = 1

hookspec = pluggy.HookspecMarker("ganforge")
hookimpl = pluggy.HookimplMarker("ganforge")

#: The kinds of named parts, each registered through the hook ``register_<kind>`` below: how messages name one.
KINDS = {"architectures": "architecture", "losses": "loss", "datasets": "dataset",
         "feature_extractors": "feature extractor", "callbacks": "callback", "augmentations": "augmentation"}


@hookspec
def register_architectures(register):
    """Register architectures: ``register(name, factory)``, factory(spec, latent_dim, **options) -> (G, D)."""


@hookspec
def register_losses(register):
    """Register losses: ``register(name, factory)``, factory(**options) -> GANLoss."""


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, factory)``, factory(root, image_size, download, **options) -> Data."""


@hookspec
def register_feature_extractors(register):
    """Register feature extractors for metrics: ``register(name, factory)``, factory(reference, device, **options) -> FeatureExtractor."""


@hookspec
def register_callbacks(register):
    """Register training callbacks: ``register(name, factory)``, factory(**options) -> Callback (``--logger NAME``)."""


@hookspec
def register_augmentations(register):
    """Register augmentations of what D sees: ``register(name, factory)``, factory(spec, **options) -> Augmentation (``--augment NAME``)."""


@hookspec
def register_recipes(register):
    """Register training settings for runs that match: ``register(dataset=, loss=, arch=, settings={...}, source="...")``."""
