"""Built-in feature extractors for ``ganforge evaluate``:

- ``inception``: torch-fidelity's InceptionV3 (the weights every published FID uses; 2048
  pool features and ImageNet logits). Its weights are downloaded on first use.
- ``classifier``: a small CNN (or, ``net=strided``, another architecture: a second opinion) trained
  on the labelled reference dataset, once, then cached: a domain extractor that needs no download.
  On stacked data (Stacked-MNIST) it is trained on the one-channel digits and classifies each
  channel (the protocol of VEEGAN and PacGAN).
- ``autoencoder``: the bottleneck of an autoencoder trained, once and cached, to reconstruct the reference
  images: a judge trained without labels, so it shares no training signal with the classifiers.
- ``raw``: the samples themselves, for vector data.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from ganforge import checkpoint
from ganforge.errors import UsageError
from ganforge.hookspecs import hookimpl
from ganforge.interfaces import Data, FeatureExtractor
from ganforge.rundir import cache_dir as default_cache_dir

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
CLASSIFIER_VERSION = 1  # part of the cache key: bump when the network or its training changes
AUTOENCODER_VERSION = 1


@hookimpl
def register_feature_extractors(register):
    register("inception", inception)
    register("classifier", classifier)
    register("autoencoder", autoencoder)
    register("raw", raw)


class Raw(FeatureExtractor):
    description = "raw: the samples themselves as features"

    def __call__(self, x):
        return x.flatten(1).float(), None


def raw(reference: Data, device):
    """The samples themselves (vector data: FID is then the Frechet distance of the samples)."""
    return Raw()


# ---------------------------------------------------------------- inception

class Inception(FeatureExtractor):
    description = "inception: torch-fidelity InceptionV3 (pool3 2048 features, ImageNet logits)"

    def __init__(self, net):
        self.net = net

    @torch.no_grad()
    def __call__(self, x):
        x = ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)  # (2048 pool features, logits)


def inception(reference: Data, device):
    """torch-fidelity's InceptionV3 on images (grayscale repeated to RGB); weights downloaded once."""
    if not reference.is_image:
        raise UsageError("the inception extractor needs images; use --extractor raw for vector data")
    from torch_fidelity import FeatureExtractorInceptionV3

    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    except Exception as exc:  # URLError offline, HTTP errors, a truncated file
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise UsageError(f"could not get the Inception weights for FID/KID ({type(exc).__name__}: {exc}); "
                         f"offline? Download {INCEPTION_URL} into {hub}/, or use --extractor classifier "
                         "(trained on the dataset, no download)") from None
    return Inception(net.to(device))


# ---------------------------------------------------------------- classifier

class SmallCNN(nn.Module):
    """Two conv-ReLU-maxpool stages and a 128-unit hidden layer (the features), then the classes."""

    def __init__(self, shape: tuple, num_classes: int):
        super().__init__()
        channels, h, w = shape
        self.conv = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU())
        self.out = nn.Linear(128, num_classes)

    def forward(self, x):
        features = self.hidden(self.conv(x))
        return features, self.out(features)


class StridedCNN(nn.Module):
    """Three strided 5x5/5x5/3x3 convolutions without pooling, then a 128-unit hidden layer (the features) and
    the classes: another architecture than SmallCNN's, so that two extractors judge a generator independently."""

    def __init__(self, shape: tuple, num_classes: int):
        super().__init__()
        channels, h, w = shape
        conv = nn.Sequential(nn.Conv2d(channels, 32, 5, 2, 2), nn.ReLU(), nn.Conv2d(32, 64, 5, 2, 2), nn.ReLU(),
                             nn.Conv2d(64, 96, 3, 2, 1), nn.ReLU(), nn.Flatten())
        flat = conv(torch.zeros(1, *shape)).shape[1]
        self.hidden = nn.Sequential(conv, nn.Linear(flat, 128), nn.ReLU())
        self.out = nn.Linear(128, num_classes)

    def forward(self, x):
        features = self.hidden(x)
        return features, self.out(features)


NETS = {"cnn": (SmallCNN, "small CNN"), "strided": (StridedCNN, "strided CNN")}


class Classifier(FeatureExtractor):
    def __init__(self, net: nn.Module, num_classes: int, description: str):
        self.net, self.data_classes, self.description = net.eval(), num_classes, description

    @torch.no_grad()
    def __call__(self, x):
        return self.net(x.float())


class PerChannel(FeatureExtractor):
    """A one-channel classifier applied to each channel of stacked data: the channels' features side by
    side, and logits over the K ** channels combined classes (the sum of the channels' log-probabilities,
    the first channel the most significant digit, as :class:`ganforge.interfaces.Data` numbers them)."""

    def __init__(self, inner: Classifier, channels: int):
        self.inner, self.channels = inner, channels
        self.data_classes = inner.data_classes ** channels
        self.description = f"{inner.description}; each of the {channels} channels classified alone"

    def __call__(self, x):
        b, c = x.shape[:2]
        features, logits = self.inner(x.reshape(b * c, 1, *x.shape[2:]))
        logp = logits.float().log_softmax(1).view(b, c, -1)
        joint = logp[:, 0]
        for i in range(1, c):
            joint = (joint[:, :, None] + logp[:, i, None, :]).flatten(1)
        return features.reshape(b, -1), joint


def classifier(reference: Data, device, epochs: int = 4, held_out: float = 0.1, cache_dir: str | None = None,
               net: str = "cnn", seed: int = 0):
    """A small network trained on the labelled reference data (``held_out`` of it kept aside to
    measure its accuracy), cached under ``cache_dir`` (default $GANFORGE_CACHE or
    ~/.cache/ganforge) by a hash of the data, so it is trained once per dataset. ``net``: "cnn" (two
    convolutions and max-pooling) or "strided" (three strided convolutions); ``seed``: its
    initialisation, split and batches. Another net and seed give a second, independently trained
    extractor. Stacked data (``Data.stacked_from``): trained on the data the channels come from,
    applied to each channel."""
    if net not in NETS:
        raise UsageError(f"classifier option net must be 'cnn' or 'strided', got {net!r}")
    _check_int("classifier", seed=seed)
    stacked = reference if getattr(reference, "stacked_from", None) is not None else None
    if stacked is not None:
        reference = stacked.stacked_from
        if reference.shape[0] != 1:
            raise UsageError(f"the classifier extractor classifies each channel of stacked data alone; the data "
                             f"the channels come from must have one channel, not {reference.shape[0]}")
    if not isinstance(reference, Data) or not reference.is_image or reference.labels is None:
        raise UsageError("the classifier extractor needs a labelled image dataset held in memory (e.g. mnist); "
                         "use --extractor inception for unlabelled images")
    _check_held_out("classifier", held_out)
    if reference.shape[1] < 4 or reference.shape[2] < 4:
        raise UsageError(f"the classifier extractor needs images of at least 4x4, got {reference.shape}")
    key = hashlib.sha256(b"%d %d %r %r " % (CLASSIFIER_VERSION, epochs, held_out, reference.x.shape))
    if (net, seed) != ("cnn", 0):  # the first extractor's key stays as it was: its caches stay valid
        key.update(f"{net} {seed} ".encode())
    network, name = NETS[net]
    model, state, path = cached_network(
        "classifier", key, reference, cache_dir, seed, lambda: network(reference.shape, reference.num_classes),
        lambda model: train_classifier(model, reference, epochs, held_out, device, seed=seed))
    text = (f"classifier: {name}{f' (seed {seed})' if seed else ''} trained on {state['trained_on']} images, "
            f"{100 * state['accuracy']:.2f}% accurate on {state['held_out']} held out (cached in {path})")
    extractor = Classifier(model.to(device), reference.num_classes, text)
    return extractor if stacked is None else PerChannel(extractor, stacked.shape[0])


def cached_network(prefix: str, key, reference: Data, cache_dir: str | None, seed: int, build, train) -> tuple:
    """``(model, state, path)``: the network ``build()`` makes, with the weights cached under ``cache_dir``
    (default $GANFORGE_CACHE or ~/.cache/ganforge) as PREFIX-HASH.safetensors, the hash being ``key``'s (the
    settings) updated with the reference data's bytes (and labels); else ``train(model)``'s, which returns
    the state to cache (``"model"``, the weights, and what describes them), saved there. The network is
    initialised and trained from ``seed`` in a random stream of its own: the same data and settings give
    the same weights, and the caller's random stream is left as it was."""
    key.update(reference.x.cpu().contiguous().numpy().tobytes())
    if reference.labels is not None:
        key.update(reference.labels.cpu().numpy().tobytes())
    path = Path(cache_dir or default_cache_dir()) / f"{prefix}-{key.hexdigest()[:20]}.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        if path.is_file():
            state = checkpoint.load(path)
            model.load_state_dict(state["model"])
        else:
            state = train(model)
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save(path, state)
    return model.eval(), state, path


def split(n: int, held_out: float, seed: int) -> tuple:
    """(held-out indices, training indices) of ``range(n)``, after seeding the random stream with ``seed``
    (which then draws the batches)."""
    torch.manual_seed(seed)
    order = torch.randperm(n)
    n_test = max(1, int(n * held_out))
    return order[:n_test], order[n_test:]


def train_classifier(net: nn.Module, reference: Data, epochs: int, held_out: float, device,
                     batch_size: int = 128, seed: int = 0) -> dict:
    """Adam on a seeded split; returns the state to cache, with the held-out accuracy."""
    test, train = split(len(reference), held_out, seed)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in train[torch.randperm(len(train))].split(batch_size):
            x, y = reference.batch(idx)
            loss = nn.functional.cross_entropy(net(x.to(device))[1], y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        correct = sum((net(x.to(device))[1].argmax(1).cpu() == y).sum().item()
                      for x, y in (reference.batch(i) for i in test.split(1024)))
    return {"model": {k: v.cpu() for k, v in net.state_dict().items()}, "accuracy": correct / len(test),
            "held_out": len(test), "trained_on": len(train)}


# ---------------------------------------------------------------- autoencoder: no labels

class AutoEncoder(nn.Module):
    """Three strided 4x4 convolutions and a linear layer to a ``code``-dimensional bottleneck (the
    features), mirrored by a linear layer and three transposed convolutions back to the image; BatchNorm
    between them (without it, training stalled at the mean image on one seed of three)."""

    def __init__(self, shape: tuple, code: int):
        super().__init__()
        channels, h, w = shape
        self.pad = (0, -w % 8, 0, -h % 8)  # sides up to multiples of 8, repeating the edge
        grid = (128, (h + self.pad[3]) // 8, (w + self.pad[1]) // 8)
        self.encode = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(math.prod(grid), code))
        self.decode = nn.Sequential(
            nn.Linear(code, math.prod(grid)), nn.ReLU(), nn.Unflatten(1, grid),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1))

    def code(self, x):
        return self.encode(nn.functional.pad(x, self.pad, mode="replicate"))

    def forward(self, x):
        return self.decode(self.code(x))[..., :x.shape[2], :x.shape[3]]


class Encoder(FeatureExtractor):
    def __init__(self, net: AutoEncoder, description: str):
        self.net, self.description = net, description

    @torch.no_grad()
    def __call__(self, x):
        return self.net.code(x.float()), None


def autoencoder(reference: Data, device, code: int = 64, epochs: int = 10, held_out: float = 0.1,
                cache_dir: str | None = None, seed: int = 0):
    """The bottleneck of an autoencoder trained to reconstruct the reference images (mean squared error),
    never shown a label: a judge that shares no training signal with the classifiers, and that sees what a
    classifier learns to ignore (slant, thickness, size, position). ``code``: the bottleneck's size;
    ``held_out`` of the images are kept aside to measure the reconstruction error (and, on labelled data,
    how often a held-out image's nearest training code has its label). Cached as the classifier is; any
    in-memory image dataset, labelled or not (stacked data as it is)."""
    _check_int("autoencoder", code=code, epochs=epochs, seed=seed)
    if code < 1 or epochs < 1:
        raise UsageError(f"autoencoder options code and epochs must be positive, got code={code}, epochs={epochs}")
    if not isinstance(reference, Data) or not reference.is_image:
        raise UsageError("the autoencoder extractor needs an image dataset held in memory; use --extractor raw "
                         "for vector data")
    _check_held_out("autoencoder", held_out)
    key = hashlib.sha256(b"autoencoder %d %d %d %r %d %r " % (AUTOENCODER_VERSION, code, epochs, held_out, seed,
                                                               reference.x.shape))
    model, state, path = cached_network(
        "autoencoder", key, reference, cache_dir, seed, lambda: AutoEncoder(reference.shape, code),
        lambda model: train_autoencoder(model, reference, epochs, held_out, device, seed=seed))
    knn = (f"; a held-out image's nearest training code has its label {100 * state['nearest_label']:.1f}% of the "
           "time" if "nearest_label" in state else "")
    text = (f"autoencoder: {code}-d code of a convolutional autoencoder trained without labels on "
            f"{state['trained_on']} images, {epochs} epochs, reconstruction MSE {state['mse']:.4f} on "
            f"{state['held_out']} held out{knn} (cached in {path})")
    return Encoder(model.to(device), text)


def train_autoencoder(net: AutoEncoder, reference: Data, epochs: int, held_out: float, device,
                      batch_size: int = 128, seed: int = 0) -> dict:
    """Adam on the mean squared reconstruction error, on a seeded split; returns the state to cache with the
    held-out error and, on labelled data, the nearest-code label agreement."""
    test, train = split(len(reference), held_out, seed)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in train[torch.randperm(len(train))].split(batch_size):
            x = reference.batch(idx)[0].to(device)
            loss = nn.functional.mse_loss(net(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        codes = {part: torch.cat([net.code(reference.batch(i)[0].to(device)).cpu() for i in index.split(1024)])
                 for part, index in (("test", test), ("train", train))}
        mse = sum(nn.functional.mse_loss(net(x), x, reduction="sum").item() / x[0].numel()
                  for x in (reference.batch(i)[0].to(device) for i in test.split(1024))) / len(test)
    state = {"model": {k: v.cpu() for k, v in net.state_dict().items()}, "mse": mse, "held_out": len(test),
             "trained_on": len(train)}
    if reference.labels is not None:  # how much of the class the codes carry, though never told it
        nearest = torch.cdist(codes["test"], codes["train"]).argmin(1)
        state["nearest_label"] = (reference.labels.cpu()[train][nearest] == reference.labels.cpu()[test]).float().mean().item()
    return state


def _check_int(name: str, **options) -> None:
    for key, value in options.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"{name} option {key} must be an integer, got {value!r}")


def _check_held_out(name: str, held_out) -> None:
    if not 0 < held_out < 1:
        raise UsageError(f"{name} option held_out must be between 0 and 1, got {held_out!r}")
