"""Checks of what plugins hand the engine, against the contracts in :mod:`ganforge.interfaces`.

Each check raises :class:`ganforge.errors.UsageError` with one line naming the plugin
(:func:`describe`), the part, the contract broken and what would be right. The engine
calls them once, before training starts (models, data) or on the first step (losses).
"""
from __future__ import annotations

import copy
import functools
import inspect

import torch

from ganforge.errors import UsageError
from ganforge.hookspecs import KINDS
from ganforge.interfaces import Augmentation, Callback, Data, GANLoss, StreamingData

#: What a part of each kind is checked against when it is made (:func:`create`): its interface, and the
#: methods it must implement itself.
INTERFACES = {"losses": (GANLoss, ("discriminator_loss", "generator_loss")),
              "augmentations": (Augmentation, ("__call__",)), "callbacks": (Callback, ())}


def describe(entry) -> str:
    """``loss 'x' (plugin 'p', package pkg)`` for a registry Entry."""
    return f"{KINDS[entry.kind]} '{entry.name}' (plugin '{entry.plugin.name}', package {entry.plugin.package})"


def create(registry, kind: str, name: str, *args, **options):
    """The ``kind`` part ``name``, made by its factory with ``args`` and the user's ``options``, checked
    against its interface (:data:`INTERFACES`)."""
    part = registry.create(kind, name, *args, **options)
    base, abstract = INTERFACES[kind]
    check_part(part, base, describe(registry.get(kind, name)), abstract)
    return part


def _a(value) -> str:
    """``a float``, ``an int``, ``None``: what a value is, for messages."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _shape(shape) -> str:
    return f"[{', '.join(map(str, shape))}]"


def forked_rng(device):
    """A context whose random draws (CPU, and ``device``'s on a GPU) leave the global streams as they were."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def check_part(obj, base, who: str, abstract: tuple = ()) -> None:
    """A part a factory (or the user) made, against its interface ``base`` (GANLoss, Augmentation,
    Callback), before anything is written: it has every method and attribute of ``base`` the engine
    uses, and implements the ``abstract`` ones; else one line naming ``who``, what is missing and the fix."""
    if isinstance(obj, type):
        raise UsageError(f"{who}: got the class {obj.__name__}, not an object; use an instance, {obj.__name__}()")
    members = sorted((name for name in vars(base) if not name.startswith("_") or name == "__call__"),
                     key=lambda name: not callable(getattr(base, name)))  # the methods first
    missing = [name for name in members if not hasattr(obj, name)]
    if missing:
        todo = [name for name in abstract if name in missing]
        raise UsageError(f"{who}: {_a(obj)} has no {', '.join(missing)}; subclass ganforge.{base.__name__}"
                         + (f" and implement {' and '.join(todo)}" if todo else ""))
    todo = [name for name in abstract if getattr(type(obj), name, None) is getattr(base, name)]
    if todo:
        raise UsageError(f"{who}: {type(obj).__name__} does not implement {' and '.join(todo)}, which a "
                         f"ganforge.{base.__name__} must; define {'them' if len(todo) > 1 else 'it'} in its class")


def check_augmentation_output(out, x, who: str) -> None:
    """An augmentation's output for a batch ``x`` that requires grad: a tensor of ``x``'s shape, dtype and
    device, still connected to ``x`` through autograd."""
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{who} returned {_a(out)} for a batch, not a tensor; return a transformed batch of the "
                         "same shape")
    for what, got, want in (("shape", _shape(out.shape), _shape(x.shape)), ("dtype", out.dtype, x.dtype),
                            ("device", out.device, x.device)):
        if got != want:
            raise UsageError(f"{who} changed the batch's {what} from {want} to {got}; an augmentation must return "
                             f"a batch of the same {what} (D sees it in place of the batch)")
    if not out.requires_grad:
        raise UsageError(f"{who} returned a batch that does not depend on its input through autograd, so no "
                         "gradient reaches the generator; transform it with differentiable torch ops (no detach(), "
                         ".numpy() or torch.no_grad())")


def check_augmentation(augment, spec, device, entry) -> None:
    """An augmentation on a random batch that requires grad (:func:`check_augmentation_output`), drawn on a
    forked random stream: the run's is untouched."""
    with forked_rng(device):
        x = (torch.rand(2, *spec.shape, device=device) * 2 - 1).requires_grad_()
        check_augmentation_output(augment(x), x, describe(entry))


def discriminator_loss(loss, D, real, fake, labels, scale):
    """``loss.discriminator_loss``, given the GradScaler's ``scale`` when it takes ``grad_scale`` (losses
    that differentiate through input gradients scale them against fp16 underflow)."""
    if _takes_grad_scale(type(loss)):
        return loss.discriminator_loss(D, real, fake, labels, grad_scale=scale)
    return loss.discriminator_loss(D, real, fake, labels)


@functools.lru_cache(maxsize=None)
def _takes_grad_scale(loss_class) -> bool:
    return "grad_scale" in inspect.signature(loss_class.discriminator_loss).parameters


def check_loss(loss, entry, G, D, spec, batch_size: int, device, autocast) -> None:
    """The loss's two methods once, on copies of the loss, G and D and a random batch of the run's batch
    size, checked (:func:`check_loss_value`); the run's loss, models, optimizers and random stream are
    untouched."""
    loss, G, D = copy.deepcopy(loss), copy.deepcopy(G), copy.deepcopy(D)
    with forked_rng(device):
        real = torch.rand(batch_size, *spec.shape, device=device) * 2 - 1
        labels = torch.randint(spec.num_classes, (batch_size,), device=device) if spec.num_classes else None
        z = torch.randn(batch_size, G.latent_dim, device=device)
        with autocast():
            fake = G(z, labels).to(real.dtype)
            d_loss = discriminator_loss(loss, D, real, fake.detach(), labels, 1.0)
        check_loss_value(d_loss, entry, "discriminator_loss")
        with autocast():
            g_loss = loss.generator_loss(D.requires_grad_(False), real, fake, labels)
        check_loss_value(g_loss, entry, "generator_loss")


def check_loss_value(value, entry, method: str) -> None:
    """A loss method's result: a 0-dim tensor connected to the autograd graph."""
    where = f"{describe(entry)}: {method}"
    if not isinstance(value, torch.Tensor):
        raise UsageError(f"{where} returned {_a(value)}, not a scalar tensor; return a torch tensor "
                         "(e.g. F.softplus(-D(real, labels).float()).mean()), not a Python number")
    if value.dim() != 0:
        raise UsageError(f"{where} returned a tensor of shape {_shape(value.shape)}, not a scalar; "
                         "reduce it to one number (e.g. .mean())")
    if not value.requires_grad:
        net = "D" if method == "discriminator_loss" else "G"
        raise UsageError(f"{where} returned a tensor that does not depend on {net}'s output through autograd "
                         f"(requires_grad is False); compute it from D(...) with torch ops: did you call .item() "
                         "or detach()?")


def check_generator_output(x, G, spec, entry) -> None:
    """G(z) for a batch of latents: a floating-point tensor ``[B, *spec.shape]``, and
    ``G.output_shape`` equal to ``spec.shape``."""
    where = f"{describe(entry)}: the generator"
    if tuple(G.output_shape) != tuple(spec.shape):
        raise UsageError(f"{where}'s output_shape is {_shape(G.output_shape)}, not the data's "
                         f"{_shape(spec.shape)}; set it to spec.shape")
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"{where} returned {_a(x)}, not a tensor; return a float tensor [B, *spec.shape]")
    batch = len(x) if x.dim() else 0
    expected = (batch, *spec.shape)
    if tuple(x.shape) != expected:
        raise UsageError(f"{where} returned shape {_shape(x.shape)} for {batch} latents; it must return "
                         f"{_shape(expected)} ([B, *spec.shape])")
    if not x.is_floating_point():
        raise UsageError(f"{where} returned dtype {x.dtype}; it must return a floating-point tensor "
                         "(images in [-1, 1]: end in tanh)")


def check_logits(logits, batch: int, entry, pack: int = 1) -> None:
    """The discriminator's output for ``batch`` samples (packed by ``pack``): raw logits ``[batch // pack]``."""
    where = f"{describe(entry)}: the discriminator"
    n = batch // pack
    form = "[B]" if pack == 1 else "[B/pack]"
    given = f"{batch} samples" if pack == 1 else f"{batch} samples packed by {pack}"
    if not isinstance(logits, torch.Tensor):
        raise UsageError(f"{where} returned {_a(logits)} for {given}, not a tensor; return raw logits "
                         f"of shape [{n}] ({form})")
    if tuple(logits.shape) != (n,):
        hint = (": flatten the trailing singleton dimension (.flatten() or .squeeze(1))"
                if tuple(logits.shape) == (n, 1) else "")
        raise UsageError(f"{where} returned shape {_shape(logits.shape)} for {given}; it must return raw "
                         f"logits of shape [{n}] ({form}){hint}")


def call_dataset(entry, make):
    """``make()`` (a dataset factory call), with Data(...)'s own refusals of what the factory
    passed it as one line naming the dataset plugin. Other exceptions pass through."""
    try:
        return make()
    except (ValueError, TypeError, AttributeError) as exc:
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        if tb.tb_frame.f_code is not Data.__init__.__code__:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{describe(entry)}: Data(...) refused what the factory passed: {message}") from None


def check_data(data, entry) -> None:
    """A dataset factory's result: Data or StreamingData, non-empty; uint8 images [N, C, H, W] or
    float [N, *shape] (images in [-1, 1]); int64 labels [N] in range(num_classes)."""
    where = describe(entry)
    if not isinstance(data, (Data, StreamingData)):
        raise UsageError(f"{where} returned {_a(data)}, not ganforge.interfaces.Data or StreamingData; "
                         "return Data(x, labels, num_classes)")
    if len(data) == 0:
        raise UsageError(f"{where} returned no samples; it needs at least one")
    if isinstance(data, StreamingData):
        return
    x, labels = data.x, data.labels
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise UsageError(f"{where}: x has dtype {x.dtype}; use uint8 images [N, C, H, W] (0..255) "
                         "or a float tensor [N, *shape]")
    if x.is_floating_point() and x.dim() == 4:
        low, high = float(x.min()), float(x.max())
        if not (-1 <= low and high <= 1):
            raise UsageError(f"{where}: float images must be in [-1, 1], got values in [{low:.4g}, {high:.4g}]; "
                             "scale them (x / 127.5 - 1 for 0..255) or pass uint8")
    if labels is None:
        return
    if labels.dtype != torch.int64 or tuple(labels.shape) != (len(x),):
        raise UsageError(f"{where}: labels must be int64 [{len(x)}], got {labels.dtype} "
                         f"{_shape(labels.shape)}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or data.num_classes is None or high >= data.num_classes:
        raise UsageError(f"{where}: labels must be in range({data.num_classes}) (num_classes), got values "
                         f"from {low} to {high}")


def check_models(G, D, spec, pack: int, g_entry, d_entry) -> None:
    """G and D (packed when ``pack`` > 1) on a dummy batch of ``2 * pack`` latents from a local
    generator, in eval mode without gradients: the weights, buffers (BatchNorm statistics,
    spectral-norm vectors), train/eval modes and the global RNG are left exactly as they were."""
    batch = 2 * pack
    device = next(G.parameters(), torch.empty(0)).device
    g = torch.Generator(device).manual_seed(0)
    z = torch.randn(batch, G.latent_dim, generator=g, device=device)
    labels = torch.randint(spec.num_classes, (batch,), generator=g, device=device) if spec.num_classes else None
    modes = {m: m.training for m in (*G.modules(), *D.modules())}
    try:
        G.eval(), D.eval()
        with torch.no_grad(), forked_rng(device):
            x = G(z, labels)
            check_generator_output(x, G, spec, g_entry)
            check_logits(D(x.float(), labels), batch, d_entry, pack)
    finally:
        for module, training in modes.items():
            module.training = training
