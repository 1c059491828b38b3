"""The contracts between the engine and its plugins.

Architecture factory
    ``factory(spec: DataSpec, latent_dim: int, **options) -> (generator, discriminator)``.
    The generator is an ``nn.Module`` with attributes ``latent_dim`` (int),
    ``output_shape`` (tuple, one sample) and ``num_classes`` (int or None); its
    ``forward(z, labels=None)`` maps ``z`` of shape ``[B, latent_dim]`` (standard
    normal) to ``[B, *output_shape]``; images must be in [-1, 1] (end in tanh).
    The discriminator's ``forward(x, labels=None)`` returns raw logits of shape
    ``[B]`` (never a sigmoid). ``labels`` are int64 class indices, given only when
    ``spec.num_classes`` is set. Options are the user's ``--arch-opt key=value``
    pairs; the factory owns its defaults.

Loss factory
    ``factory(**options) -> GANLoss``.

Dataset factory
    ``factory(root, image_size, download, **options) -> Data`` (or ``StreamingData`` when
    the samples do not fit in memory). ``root`` is the
    data directory (None for generated data), ``image_size`` the side length the
    run asks for (image datasets resize to it; vector datasets ignore it),
    ``download`` whether fetching over the network is allowed. Training settings for the
    data are recipes (``register_recipes``; a factory's older ``recommended`` and
    ``recommended_with_loss`` attributes are read as recipes too).

Feature-extractor factory
    ``factory(reference: Data, device, **options) -> FeatureExtractor``: the features that
    FID, KID, precision/recall and density/coverage compare, for data like ``reference``
    (the dataset generated samples are compared with).
"""
from __future__ import annotations

from dataclasses import dataclass

from ganforge.errors import UsageError


@dataclass(frozen=True)
class DataSpec:
    """What an architecture factory is told about the data.

    ``shape`` is one sample: ``(C, H, W)`` for images, ``(D,)`` for vectors.
    ``num_classes`` is set when the run is class-conditional.
    """

    shape: tuple
    num_classes: int | None = None

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def check_image_size(self, arch: str, smallest: int = 16) -> None:
        """For architectures that halve the resolution step by step: UsageError (naming ``arch`` and the fix)
        unless the samples are square images whose side is a power of two, at least ``smallest``."""
        if not self.is_image:
            raise UsageError(f"{arch} needs image data, got samples of shape {self.shape}; use --arch mlp")
        _, h, w = self.shape
        if h != w or h < smallest or h & (h - 1):
            raise UsageError(f"{arch} needs square power-of-two images of at least {smallest}x{smallest}, got "
                             f"{h}x{w}; set --image-size to {smallest}, {2 * smallest}, {4 * smallest}, ...")


class Data:
    """A dataset held in memory, as a dataset factory returns it.

    ``x`` is either a uint8 image tensor ``[N, C, H, W]`` with values 0..255
    (mapped to [-1, 1] when a batch is drawn, so it stays small) or a float
    tensor ``[N, *shape]``: images in [-1, 1], vectors in any range.
    ``labels`` is an optional int64 tensor ``[N]`` of class indices in
    ``range(num_classes)``. A mixture of Gaussians sets ``modes`` (``[K, *shape]``
    centres) and ``mode_std``, which the toy metrics of ``ganforge evaluate`` use. Data whose
    channels are samples of another labelled one-channel dataset (Stacked-MNIST) sets ``stacked_from``
    to that Data: its K classes combine into this data's K ** channels, the first channel's the most
    significant digit (label = sum of channel c's label x K ** (channels - 1 - c)); the ``classifier``
    extractor then classifies each channel.
    """

    def __init__(self, x, labels=None, num_classes: int | None = None, *, modes=None, mode_std: float | None = None,
                 stacked_from: "Data | None" = None):
        import torch

        if x.dim() < 2 or len(x) == 0:
            raise ValueError(f"Data needs a non-empty [N, *shape] tensor, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8 and x.dim() != 4:
            raise ValueError("uint8 Data must be images [N, C, H, W]")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64)
            if labels.shape != (len(x),):
                raise ValueError(f"labels must have shape [{len(x)}], got {tuple(labels.shape)}")
            if num_classes is None:
                num_classes = int(labels.max()) + 1
        self.x, self.labels, self.num_classes = x, labels, num_classes
        self.modes, self.mode_std, self.stacked_from = modes, mode_std, stacked_from

    @property
    def shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device) -> "Data":
        labels = None if self.labels is None else self.labels.to(device)
        return Data(self.x.to(device), labels, self.num_classes, modes=self.modes, mode_std=self.mode_std,
                    stacked_from=self.stacked_from)

    def batch(self, index):
        """Samples at ``index`` as float32 (images in [-1, 1]) and their labels (or None)."""
        return to_float(self.x[index]), (None if self.labels is None else self.labels[index])


class StreamingData:
    """A dataset too large to hold in memory, read in batches by a DataLoader with workers.

    ``dataset`` is a ``torch.utils.data.Dataset`` whose items are ``(sample, label)``:
    a uint8 ``[C, H, W]`` image (or a float sample) and an int label (-1 when unlabelled).
    ``shape`` is one sample's shape; ``num_classes`` is None when unlabelled.
    """

    def __init__(self, dataset, shape: tuple, num_classes: int | None = None):
        self.dataset, self.shape, self.num_classes = dataset, tuple(shape), num_classes

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return len(self.dataset)


def to_float(x):
    """uint8 images (0..255) to float32 in [-1, 1]; other tensors to float32 unchanged."""
    import torch

    return x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.float()


class GANLoss:
    """Base class of a loss. Subclass it and implement the two loss methods.

    Both receive the discriminator ``D`` (call it as ``D(x, labels)``), a real
    batch, a generated batch and the batch's labels (None when unconditional),
    and return a scalar tensor to minimise. ``discriminator_loss`` gets a
    detached fake batch; ``generator_loss`` gets one that carries gradients to
    the generator. Logits may be low precision under autocast: reduce in fp32.
    """

    #: Settings that are part of the method (WGAN's ``{"d_steps": 5}``): over every recipe, under
    #: ``--fast``, the config file and the flags. Learning rates and penalties depend on the data and
    #: the architecture too: register them as a recipe (``register_recipes(loss=...)``).
    recommended: dict = {}
    #: True when ``discriminator_loss`` differentiates through input gradients
    #: (a gradient penalty). The engine then hands it the uncompiled D.
    double_backward: bool = False
    #: Before 0.2 the engine set this to the GradScaler's scale; now a ``discriminator_loss`` that
    #: declares a ``grad_scale`` parameter gets it as an argument. Kept for plugins that read it.
    grad_scale: float = 1.0

    def discriminator_loss(self, D, real, fake, labels=None):
        raise NotImplementedError

    def generator_loss(self, D, real, fake, labels=None):
        raise NotImplementedError

    def after_discriminator_step(self, D) -> None:
        """Called after each discriminator update (weight clipping goes here)."""


class Augmentation:
    """Base class of what an augmentation factory returns: a differentiable, random transform of
    every batch the discriminator sees, real and generated alike (``--augment NAME``).

    ``__call__(x)`` gets a batch (images in [-1, 1]) and returns one of the same shape; gradients
    must flow through it to the generator. ``observe(real_logits)`` is called with D's logits on
    each real batch of a discriminator update: an adaptive augmentation (ADA) tunes its strength
    there, on the device, without host syncs. Whatever must survive a resume goes in
    ``state_dict()`` (tensors and plain values), which checkpoints carry.
    """

    def __call__(self, x):
        raise NotImplementedError

    def observe(self, real_logits) -> None:
        """D's logits on a real batch; adaptive augmentations adjust here."""

    def log(self) -> dict:
        """Values logged with the losses every ``--log-every`` steps (numbers or 0-d tensors), e.g. ADA's p."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FeatureExtractor:
    """Base class of what a feature-extractor factory returns.

    ``__call__(x)`` gets a float32 batch shaped like the reference data (images in
    [-1, 1]) on the evaluation device and returns ``(features, logits)``: features
    ``[B, F]`` and class logits ``[B, K]`` (for the Inception Score), or None.
    ``data_classes`` is set when the logits predict the reference dataset's own
    classes: class coverage is then measured too.
    """

    data_classes: int | None = None
    #: One line shown beside the results, e.g. what the extractor was trained on and its accuracy.
    description: str = ""

    def __call__(self, x):
        raise NotImplementedError


class Callback:
    """Base class of a training callback; override the events you need (each does nothing here).

    ``run`` is the run in progress: ``run.cfg`` (the TrainConfig), ``run.run_dir``, ``run.step``,
    ``run.total`` (steps), ``run.state`` (``G``, ``D``, ``generator``: the EMA one when kept),
    ``run.samples()`` (the generator's samples of a fixed noise batch at this step, float32 on the
    CPU), ``run.samples_picture()`` (the same drawn as a PIL image), ``run.due(every)``
    (whether this step is a multiple of ``every``, or the last) and ``run.stop(reason)`` (end the
    run after the next step, checkpointed: early stopping, a tuner's pruning). Callbacks run in the process that
    writes (rank 0), and must not draw from torch's global random stream: resumed runs stay exact.
    """

    def on_start(self, run) -> None:
        """Before the first step (of this process: ``run.step`` is where a resumed run continues)."""

    def on_step(self, run, record: dict | None) -> None:
        """After every step. ``record`` is the logged ``{"step", "d_loss", "g_loss", "images_per_s"}``
        every ``--log-every`` steps and at the last, else None (reading losses costs a host sync)."""

    def on_evaluate(self, run, metrics: dict) -> None:
        """After each ``--eval-every`` evaluation, with its metrics."""

    def on_checkpoint(self, run, path) -> None:
        """After a checkpoint file is written (``step-N`` or ``best``)."""

    def on_end(self, run) -> None:
        """When training stops: finished, interrupted or failed."""
