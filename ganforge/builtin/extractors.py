"""Built-in feature extractors for ``ganforge evaluate``:

- ``inception``: torch-fidelity's InceptionV3 (the weights every published FID uses; 2048
  pool features and ImageNet logits). Its weights are downloaded on first use.
- ``classifier``: a small CNN (or, ``net=strided``, another architecture: a second opinion) trained
  on the labelled reference dataset, once, then cached: a domain extractor that needs no download.
  On stacked data (Stacked-MNIST) it is trained on the one-channel digits and classifies each
  channel (the protocol of VEEGAN and PacGAN).
- ``raw``: the samples themselves, for vector data.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ganforge import checkpoint, hookimpl
from ganforge.errors import UsageError
from ganforge.interfaces import Data, FeatureExtractor
from ganforge.rundir import cache_dir as default_cache_dir

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
CLASSIFIER_VERSION = 1  # part of the cache key: bump when the network or its training changes


@hookimpl
def register_feature_extractors(register):
    register("inception", inception)
    register("classifier", classifier)
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
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"classifier option seed must be an integer, got {seed!r}")
    stacked = reference if getattr(reference, "stacked_from", None) is not None else None
    if stacked is not None:
        reference = stacked.stacked_from
        if reference.shape[0] != 1:
            raise UsageError(f"the classifier extractor classifies each channel of stacked data alone; the data "
                             f"the channels come from must have one channel, not {reference.shape[0]}")
    if not isinstance(reference, Data) or not reference.is_image or reference.labels is None:
        raise UsageError("the classifier extractor needs a labelled image dataset held in memory (e.g. mnist); "
                         "use --extractor inception for unlabelled images")
    if not 0 < held_out < 1:
        raise UsageError(f"classifier option held_out must be between 0 and 1, got {held_out!r}")
    if reference.shape[1] < 4 or reference.shape[2] < 4:
        raise UsageError(f"the classifier extractor needs images of at least 4x4, got {reference.shape}")
    x, labels = reference.x.cpu(), reference.labels.cpu()
    key = hashlib.sha256(b"%d %d %r %r " % (CLASSIFIER_VERSION, epochs, held_out, x.shape))
    if (net, seed) != ("cnn", 0):  # the first extractor's key stays as it was: its caches stay valid
        key.update(f"{net} {seed} ".encode())
    key.update(x.contiguous().numpy().tobytes())
    key.update(labels.numpy().tobytes())
    path = Path(cache_dir or default_cache_dir()) / f"classifier-{key.hexdigest()[:20]}.safetensors"
    network, name = NETS[net]
    model = network(reference.shape, reference.num_classes)
    if path.is_file():
        state = checkpoint.load(path)
        model.load_state_dict(state["model"])
    else:
        with torch.random.fork_rng(devices=[]):  # a run's own random stream is left untouched
            state = train_classifier(model, reference, epochs, held_out, device, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(path, state)
    text = (f"classifier: {name}{f' (seed {seed})' if seed else ''} trained on {state['trained_on']} images, "
            f"{100 * state['accuracy']:.2f}% accurate on {state['held_out']} held out (cached in {path})")
    extractor = Classifier(model.to(device), reference.num_classes, text)
    return extractor if stacked is None else PerChannel(extractor, stacked.shape[0])


def train_classifier(net: nn.Module, reference: Data, epochs: int, held_out: float, device,
                     batch_size: int = 128, seed: int = 0) -> dict:
    """Adam on a seeded split; returns the state to cache, with the held-out accuracy."""
    torch.manual_seed(seed)
    order = torch.randperm(len(reference))
    n_test = max(1, int(len(reference) * held_out))
    test, train = order[:n_test], order[n_test:]
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
    return {"model": {k: v.cpu() for k, v in net.state_dict().items()}, "accuracy": correct / n_test,
            "held_out": n_test, "trained_on": len(train)}
