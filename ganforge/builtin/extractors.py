"""Built-in feature extractors for ``ganforge evaluate``:

- ``inception``: torch-fidelity's InceptionV3 (the weights every published FID uses; 2048
  pool features and ImageNet logits). Its weights are downloaded on first use.
- ``classifier``: a small CNN trained on the labelled reference dataset, once, then cached:
  a domain extractor that needs no download (the Stacked-MNIST protocol of VEEGAN/PacGAN).
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


class Classifier(FeatureExtractor):
    def __init__(self, net: SmallCNN, num_classes: int, description: str):
        self.net, self.data_classes, self.description = net.eval(), num_classes, description

    @torch.no_grad()
    def __call__(self, x):
        return self.net(x.float())


def classifier(reference: Data, device, epochs: int = 4, held_out: float = 0.1, cache_dir: str | None = None):
    """A small CNN trained on the labelled reference data (``held_out`` of it kept aside to
    measure its accuracy), cached under ``cache_dir`` (default $GANFORGE_CACHE or
    ~/.cache/ganforge) by a hash of the data, so it is trained once per dataset."""
    if not isinstance(reference, Data) or not reference.is_image or reference.labels is None:
        raise UsageError("the classifier extractor needs a labelled image dataset held in memory (e.g. mnist); "
                         "use --extractor inception for unlabelled images")
    if not 0 < held_out < 1:
        raise UsageError(f"classifier option held_out must be between 0 and 1, got {held_out!r}")
    if reference.shape[1] < 4 or reference.shape[2] < 4:
        raise UsageError(f"the classifier extractor needs images of at least 4x4, got {reference.shape}")
    x, labels = reference.x.cpu(), reference.labels.cpu()
    key = hashlib.sha256(b"%d %d %r %r " % (CLASSIFIER_VERSION, epochs, held_out, x.shape))
    key.update(x.contiguous().numpy().tobytes())
    key.update(labels.numpy().tobytes())
    path = Path(cache_dir or default_cache_dir()) / f"classifier-{key.hexdigest()[:20]}.safetensors"
    net = SmallCNN(reference.shape, reference.num_classes)
    if path.is_file():
        state = checkpoint.load(path)
        net.load_state_dict(state["model"])
    else:
        with torch.random.fork_rng(devices=[]):  # a run's own random stream is left untouched
            state = train_classifier(net, reference, epochs, held_out, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(path, state)
    text = (f"classifier: small CNN trained on {state['trained_on']} images, {100 * state['accuracy']:.2f}% "
            f"accurate on {state['held_out']} held out (cached in {path})")
    return Classifier(net.to(device), reference.num_classes, text)


def train_classifier(net: SmallCNN, reference: Data, epochs: int, held_out: float, device,
                     batch_size: int = 128) -> dict:
    """Adam on a seeded split; returns the state to cache, with the held-out accuracy."""
    torch.manual_seed(0)
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
